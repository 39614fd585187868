"""Pseudo ground-truth body/hand pose labels for the geometric decoder (paper Sec. 3.3).

detect (mediapipe pose + hands, video mode) -> fit (SMPLify-style optimisation of a body model: Anny by default,
SMPL + MANO via smplx when licensed files are configured) -> label_format (the per-clip npz the geometric
decoder trains on) -> quality (gates + great-expectations suite) -> accuracy (against synthetic ground truth).
"""
