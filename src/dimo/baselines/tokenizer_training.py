"""Training and scoring the 4DMoT (`motion_tokenizer.py`) on the pseudo-labels' 3D joints.

Windows: `window` consecutive valid frames of a label's fitted 3D keypoints (`fit_keypoints3d`, metres, camera
axes), mid-hip removed (MTVCrafter's root-relative joints), every `stride` frames. The loop is AdamW on
L1 + commitment (the paper's optimiser settings, `lr` then `lr_late` for the last `late_fraction` of the
steps). The held-out score is MPJPE in mm against the ground-truth labels of the test split, beside the
error of always answering the training windows' mean pose, and the share of codes the held-out windows use.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

from dimo.baselines.motion_tokenizer import MotionTokenizer, mpjpe_mm
from dimo.labelling import label_format

log = logging.getLogger(__name__)
HIPS = (label_format.FIT_KEYPOINTS.index("left_hip"), label_format.FIT_KEYPOINTS.index("right_hip"))


def label_windows(label: dict, window: int, stride: int) -> np.ndarray:
    """(N, window, J, 3) root-relative joint windows of one label, from runs of valid frames only."""
    joints = np.asarray(label["fit_keypoints3d"], np.float32)
    joints = joints - joints[:, list(HIPS)].mean(1, keepdims=True)
    valid = np.asarray(label["valid"], bool)
    starts = [s for s in range(0, len(joints) - window + 1, stride) if valid[s:s + window].all()]
    if not starts:
        return np.zeros((0, window, joints.shape[1], 3), np.float32)
    return np.stack([joints[s:s + window] for s in starts])


def clip_windows(clips: pd.DataFrame, window: int, stride: int) -> np.ndarray:
    """The windows of every clip of a table (their label files named by `label_path`)."""
    parts = [label_windows(label_format.load_label(p), window, stride) for p in clips["label_path"]]
    return np.concatenate(parts) if parts else np.zeros((0, window, len(label_format.FIT_KEYPOINTS), 3), np.float32)


def held_out_splits(clips: pd.DataFrame):
    """(train clips, held-out clips, what they are), best first: the test split, the val split, then every 4th
    train clip (which is then not trained on). The first whose clips give windows is scored."""
    train = clips[clips["split"] == "train"]
    for split in ("test", "val"):
        if (clips["split"] == split).any():
            yield train, clips[clips["split"] == split], f"{split} split"
    held = train.iloc[::4]
    yield train.drop(held.index), held, "every 4th train clip"


def fit(windows: np.ndarray, cfg: dict, seed: int) -> tuple[MotionTokenizer, list[dict]]:
    """A tokenizer trained on (N, T, J, 3) windows for `cfg['steps']` steps; the loss history (every step)."""
    torch.manual_seed(seed)
    data = torch.from_numpy(windows)
    model = MotionTokenizer(num_joints=data.shape[2], **cfg["model"])
    model.set_statistics(data)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.99), weight_decay=1e-4)
    late = int(cfg["steps"] * (1 - cfg.get("late_fraction", 0.0)))
    generator = torch.Generator().manual_seed(seed)
    history, start = [], time.perf_counter()
    model.train()
    for step in range(cfg["steps"]):
        if step == late:
            for group in opt.param_groups:
                group["lr"] = cfg.get("lr_late", cfg["lr"])
        batch = data[torch.randint(len(data), (cfg["batch_size"],), generator=generator)]
        out = model(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        history.append({"step": step, **{k: out[k].item() for k in ("loss", "reconstruction", "commitment")}})
    log.info("motion tokenizer: %d steps in %.0f s, final loss %.4f", cfg["steps"], time.perf_counter() - start,
             history[-1]["loss"])
    return model.eval(), history


@torch.no_grad()
def score(model: MotionTokenizer, held_out: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """Held-out MPJPE (mm) through the codes, the mean-pose baseline's MPJPE, and the codebook's usage."""
    joints = torch.from_numpy(held_out)
    codes = model.encode(joints)
    recon = mpjpe_mm(model.decode(codes), joints)
    mean_pose = torch.from_numpy(train).mean((0, 1)).expand_as(joints)
    used = torch.unique(codes).numel()
    return {"heldout_mpjpe_mm": float(recon.mean()), "mean_pose_mpjpe_mm": float(mpjpe_mm(mean_pose, joints).mean()),
            "codebook_usage": used / model.config.codebook_size, "heldout_windows": len(held_out)}
