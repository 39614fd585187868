"""Pose accuracy and camera following of generated videos: the pseudo-labeller runs on them (labels cached by
pixels), and the labels are compared with the target's synthetic ground truth (MPJPE, PA-MPJPE) and with the
target's own label (apparent camera motion). The metrics are registered in `dimo.evaluation.registry` (kind
`pose`); `benchmark.score` calls `pose_and_camera` when given the labelling parameters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd

from dimo import inference

log = logging.getLogger(__name__)

# Apparent camera motion, as seen by the labeller: scale change (zoom / dolly), image shift of the person (truck,
# pan, pedestal) and turn of the body relative to the camera (arcs). A signal counts as "moving" beyond its unit.
CAMERA_SIGNAL_UNITS = {"zoom": 0.15, "shift_x": 0.08, "shift_y": 0.08, "orbit_deg": 15.0}


def camera_signals(label: Mapping[str, np.ndarray], min_frames: int = 4) -> dict[str, float] | None:
    """The apparent camera motion of a labelled video, from its first to its last quarter of valid frames:
    zoom = log scale change of the torso, shift_x/y = the person's image shift (fraction of the frame),
    orbit_deg = the body's turn about the camera's vertical axis. None with too few valid frames."""
    from dimo.labelling import label_format as lf

    valid = np.flatnonzero(np.asarray(label["valid"], bool))
    if len(valid) < min_frames:
        return None
    q = max(1, len(valid) // 4)
    first, last = valid[:q], valid[-q:]
    kp = np.asarray(label["keypoints2d_body"], np.float64)  # (T, 33, 3) pixels
    H, W = float(label["height"]), float(label["width"])
    shoulders, hips = kp[:, [11, 12], :2].mean(1), kp[:, [23, 24], :2].mean(1)
    torso = np.linalg.norm(shoulders - hips, axis=-1)
    centre = (shoulders + hips) / 2
    R = lf.matrix_from_rot6d(np.asarray(label["root_orient"], np.float64))
    rel = R[last[-1]] @ R[first[0]].T  # the body's turn in camera axes (x right, y down, z forward)
    return {"zoom": float(np.log(np.median(torso[last]) / max(np.median(torso[first]), 1e-6))),
            "shift_x": float((np.median(centre[last, 0]) - np.median(centre[first, 0])) / W),
            "shift_y": float((np.median(centre[last, 1]) - np.median(centre[first, 1])) / H),
            "orbit_deg": float(np.degrees(np.arctan2(rel[0, 2], rel[2, 2])))}


def follows(generated: Mapping[str, float], target: Mapping[str, float]) -> bool:
    """Does the generated video show the target's camera motion? The target's dominant signal (in units of
    CAMERA_SIGNAL_UNITS) must appear with the same sign and at least half its size; a target below one unit on
    every signal (a static camera) is followed when the generated video also stays below one unit."""
    g = {k: generated[k] / u for k, u in CAMERA_SIGNAL_UNITS.items()}
    t = {k: target[k] / u for k, u in CAMERA_SIGNAL_UNITS.items()}
    key = max(t, key=lambda k: abs(t[k]))
    if abs(t[key]) < 1.0:
        return all(abs(v) < 1.0 for v in g.values())
    return bool(np.sign(g[key]) == np.sign(t[key]) and abs(g[key]) >= 0.5 * abs(t[key]))


def pose_and_camera(pairs: pd.DataFrame, generated: Mapping[str, np.ndarray], label_params: dict,
                    label_store=None, progress: bool = True) -> pd.DataFrame:
    """Label the generated videos (cached by pixels in `label_store`) and compare: pose against the target's
    ground truth (MPJPE / PA-MPJPE of the fitted body, mm, hip-centred), camera motion against the target's label."""
    import tempfile

    from dimo.labelling import accuracy, labeller
    from dimo.labelling import label_format as lf

    tmp = None
    if label_store is None:
        tmp = tempfile.TemporaryDirectory()
        label_store = labeller.LabelStore(tmp.name)
    try:
        clips = [{"clip_id": r.pair_id, "path": f"generated/{r.pair_id}", "fps": inference.MODEL_FPS,
                  "num_frames": len(generated[r.pair_id]), "frames": np.asarray(generated[r.pair_id])}
                 for r in pairs.itertuples()]
        t0 = time.perf_counter()
        rows = labeller.label_clips(clips, label_store, label_params, progress=progress)
        log.info("benchmark: labelled %d generated videos in %.1f s", len(rows), time.perf_counter() - t0)
        out = []
        for r, lab_row in zip(pairs.itertuples(), rows):
            label = lf.load_label(lab_row["label_path"])
            res = {"pair_id": r.pair_id, "detection_rate": float(np.mean(label["person_detected"])),
                   "camera_following": np.nan}  # NaN: too few frames with a person to read the camera
            if r.target_gt_path:
                with np.load(r.target_gt_path) as gt_file:
                    acc = accuracy.clip_accuracy(label, {k: gt_file[k] for k in gt_file.files})
                res["mpjpe_mm"] = float(np.mean(acc["mpjpe_fit"])) if acc.get("mpjpe_fit") else np.nan
                res["pa_mpjpe_mm"] = float(np.mean(acc["pa_mpjpe_fit"])) if acc.get("pa_mpjpe_fit") else np.nan
            gen_sig = camera_signals(label)
            tgt_sig = camera_signals(lf.load_label(r.target_label_path)) if isinstance(r.target_label_path, str) \
                else None
            if gen_sig is not None and tgt_sig is not None:
                res["camera_following"] = float(follows(gen_sig, tgt_sig))
                res.update({f"camera_{k}_error": abs(gen_sig[k] - tgt_sig[k]) for k in CAMERA_SIGNAL_UNITS})
            out.append(res)
        return pd.DataFrame(out)
    finally:
        if tmp is not None:
            tmp.cleanup()
