"""Synthetic view-rich data: Anny bodies driven by DeepMimic motions, filmed by vocabulary camera rigs.

body.py (identities), motion.py (DeepMimic loading, retargeting, hands), cameras.py (rigs, trajectories),
render.py (moderngl on EGL), io.py (a deterministic npz dataset). See docs/synthesis.md.
"""
