"""Which (driving clip, target clip) pairs each training stage sees (paper Sec. 3.3, "Training Strategies").

A pair is reconstruction (driving = target) or cross-view reproduction (driving and target are two views or
camera paths of the same motion: same group, different clip). Stage 1: single-view reconstruction only;
stage 2: a balanced mix of both; stage 3: view-rich (multi-view, moving-camera) data only.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

KINDS = ("reconstruction", "cross_view")


def build_pairs(clips: pd.DataFrame, stage: dict) -> pd.DataFrame:
    """All candidate pairs of one stage: columns kind, driving_clip_id, target_clip_id, group_id."""
    rows = []
    recon_src = clips[clips["supervision"].isin(stage["reconstruction_from"])]
    if stage["mix"].get("reconstruction", 0) > 0:
        rows += [("reconstruction", c, c, g) for c, g in zip(recon_src["clip_id"], recon_src["group_id"])]
    if stage["mix"].get("cross_view", 0) > 0:
        rich = clips[clips["supervision"].isin(stage["cross_view_from"])]
        for group, members in rich.groupby("group_id"):
            ids = sorted(members["clip_id"])
            rows += [("cross_view", a, b, group) for a in ids for b in ids if a != b]
    pairs = pd.DataFrame(rows, columns=["kind", "driving_clip_id", "target_clip_id", "group_id"])
    missing = [k for k, p in stage["mix"].items() if p > 0 and not (pairs["kind"] == k).any()]
    if missing:
        raise ValueError(f"stage {stage['name']}: the mix asks for {missing} pairs but the data has none "
                         f"(reconstruction_from={stage['reconstruction_from']}, "
                         f"cross_view_from={stage['cross_view_from']})")
    return pairs


def kind_of_sample(n: int, mix: dict) -> str:
    """Deterministic, exactly proportional assignment of global sample n to a pair kind.

    Sample n is reconstruction when floor((n+1)p) - floor(n p) = 1 with p the reconstruction share, so any
    window of samples holds the stated ratio to within one sample.
    """
    p = mix.get("reconstruction", 0.0) / max(sum(mix.values()), 1e-12)
    return "reconstruction" if math.floor((n + 1) * p + 1e-9) - math.floor(n * p + 1e-9) == 1 else "cross_view"


def sample_indices(pairs: pd.DataFrame, mix: dict, first_sample: int, count: int, seed: int) -> list[int]:
    """Row indices of `pairs` for global samples first_sample .. first_sample+count-1.

    A sample depends only on (seed, its global index): a resumed run draws exactly what it would have drawn.
    """
    by_kind = {k: np.flatnonzero(pairs["kind"].to_numpy() == k) for k in KINDS}
    out = []
    for n in range(first_sample, first_sample + count):
        rows = by_kind[kind_of_sample(n, mix)]
        out.append(int(rows[np.random.default_rng([seed, n]).integers(len(rows))]))
    return out
