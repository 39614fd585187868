"""Metrics of motion control that need no sharp pixels (issue 14, item 3), each per pair with a bootstrap CI.

* motion dependence: the flow-matching loss with the true driving clip vs a mismatched one, as a relative gap.
  Same noise, same t, same reference and prompt: only the driving inputs differ, so a model that ignores its motion
  input scores exactly 0.
* pose following: 2D joint error / PCK of a video's joints (read by `pose_probe.PoseProbe`) against ground truth.
  Reference: copying the driving view's own ground-truth 2D joints ("copy driving pose").
* view-agnostic tokens: cross-view retrieval of per-frame motion tokens between synchronised views.
  Reference: `retrieval_chance`.
* `bootstrap_ci` / `paired_difference_ci`: percentile bootstrap of a mean (or of a paired difference: "A beats B").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import stats

from dimo.models import DimoModel

# The keys of a training example (`PairBatches.example`) that come from the driving clip.
DRIVING_KEYS = ("driving_frames", "hand_keypoints", "wrist_keypoints", "pose_targets", "pose_valid")


# ---------------------------------------------------------------------------------------------- confidence intervals
def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap CI of the mean of `values` (NaNs dropped) -> dict(mean, ci_low, ci_high, n).
    Deterministic for a seed. With fewer than 2 values the interval is the value itself (or NaN when empty)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    mean = float(x.mean())
    if x.size < 2 or np.ptp(x) == 0:  # no spread: every resample has the same mean
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": int(x.size)}
    res = stats.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                          rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return {"mean": mean, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": int(x.size)}


def paired_difference_ci(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """CI of mean(a - b) over pairs measured on the same items (the pairing removes the item-to-item spread).
    "A beats B" on a higher-is-better metric when ci_low > 0; pairs where either value is NaN are dropped."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length, got {a.size} and {b.size}")
    return bootstrap_ci(a - b, n_boot, seed, level)


# ---------------------------------------------------------------------------------------------- motion dependence
def _motion_of(pairs: pd.DataFrame, clip_motion: dict | None) -> pd.Series:
    """The motion a pair's driving clip performs: `clip_motion[driving_clip_id]`, a `motion_name` column, or else
    the group id (synchronised views of one performance share it)."""
    if clip_motion is not None:
        return pairs["driving_clip_id"].map(clip_motion)
    if "motion_name" in pairs:
        return pairs["motion_name"]
    return pairs["group_id"]


def mismatched_pairs(pairs: pd.DataFrame, seed: int, clip_motion: dict | None = None,
                     pool: dict | None = None, clip_identity: dict | None = None) -> pd.DataFrame:
    """Each pair with its driving clip swapped for a driving clip of a DIFFERENT motion (drawn with rng(seed));
    the target (and so reference and prompt) stays. Adds `true_driving_clip_id`. `clip_motion` maps clip id ->
    motion name (e.g. the synthetic clip table's `motion_name`). The candidates are the pairs' own driving clips,
    plus `pool` (clip id -> motion) when given: a small held-out set may hold one motion only, and the swapped
    driver only has to move differently, not be held out. `clip_identity` (clip id -> person) keeps the swapped
    driver's person the true driver's where such a clip exists: then only the motion changes, and a gap cannot
    come from the driving frames' appearance (clothes, skin) leaking through the tokens."""
    pairs = pairs.reset_index(drop=True)
    motion = _motion_of(pairs, clip_motion).to_numpy()
    drivers = pairs["driving_clip_id"].to_numpy()
    candidates = dict(zip(drivers, motion, strict=True)) | dict(pool or {})
    names, moves = np.array(sorted(candidates)), np.array([candidates[c] for c in sorted(candidates)])
    if len(set(moves)) < 2:
        raise ValueError("mismatched pairs need driving clips of at least two different motions")
    people = np.array([(clip_identity or {}).get(c) for c in names], dtype=object)
    rng = np.random.default_rng(seed)
    swapped = []
    for driver, m in zip(drivers, motion, strict=True):
        other = moves != m
        same = other & (people == clip_identity.get(driver)) if clip_identity else np.zeros_like(other)
        swapped.append(names[rng.choice(np.flatnonzero(same if same.any() else other))])
    out = pairs.copy()
    out["true_driving_clip_id"] = drivers
    out["driving_clip_id"] = swapped
    return out


def _batched(example: dict) -> dict:
    """An example from `PairBatches.example` (no batch dim) or a collated batch -> a collated batch."""
    if example["target_latents"].ndim == 4:
        return {k: (v[None] if isinstance(v, torch.Tensor) else v) for k, v in example.items()}
    return example


@torch.no_grad()
def conditioned_flow_loss(model: DimoModel, batch: dict, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample flow-matching loss (B,) with every condition given: `training_losses` without condition dropout
    and without the geometric term, at fixed noise and t. Runs the model as it is (eval: no augmentation)."""
    x0 = batch["target_latents"]
    z = model.encode_motion(batch.get("driving_frames"), batch.get("hand_keypoints"), batch.get("wrist_keypoints"),
                            batch.get("pose_targets"))
    text = model._text(batch["text_embeddings"], batch.get("text_mask"))
    x_t = model.flow.noisy(x0, noise, t)
    pred = model.predict_velocity(x_t, model.flow.model_timestep(t), batch.get("reference_latents"), text, z,
                                  batch.get("image_embeddings"))
    err = (pred.float() - model.flow.velocity_target(x0, noise).float()) ** 2
    return err.flatten(1).mean(1)


def motion_dependence_gaps(model: DimoModel, batches: list[dict], mismatched: list[dict], seed: int,
                           n_draws: int = 4) -> np.ndarray:
    """Per pair: (loss_mismatched - loss_true) / loss_true, both losses averaged over the same `n_draws`
    (noise, t) draws (rng(seed, pair index)). `batches[i]` is pair i's example (`PairBatches.example` or a
    collated batch of one); `mismatched[i]` gives the driving inputs (`DRIVING_KEYS`) of another motion, everything
    else comes from `batches[i]`. A collated batch of B pairs adds B values. -> (N,) float64."""
    if len(batches) != len(mismatched):
        raise ValueError(f"{len(batches)} batches but {len(mismatched)} mismatched driving inputs")
    was_training = model.training
    model.eval()
    gaps = []
    try:
        for i, (true, other) in enumerate(zip(batches, mismatched)):
            true, other = _batched(true), _batched(other)
            swapped = {**true, **{k: other[k] for k in DRIVING_KEYS if k in other}}
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
            x0 = true["target_latents"]
            B = x0.shape[0]
            loss_true, loss_swapped = torch.zeros(B), torch.zeros(B)
            for _ in range(n_draws):
                t = model.flow.sample_t(B, generator=g)
                noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
                loss_true += conditioned_flow_loss(model, true, noise, t)
                loss_swapped += conditioned_flow_loss(model, swapped, noise, t)
            gaps.append(((loss_swapped - loss_true) / loss_true).double().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(gaps) if gaps else np.zeros(0)


# ---------------------------------------------------------------------------------------------- motion tokens
@torch.no_grad()
def frame_motion_tokens(model: DimoModel, driving_frames: torch.Tensor, body_only: bool = True) -> np.ndarray:
    """Per-frame motion tokens of one clip: driving_frames (T, 3, H, W) in [-1, 1] (or uint8) -> (T, K*D), the K
    body tokens of each frame flattened (the hand tokens need hand keypoints and say little about the view).
    `body_only=False` keeps every token `encode_motion` gives (hands from the wrist fallback: no keypoints)."""
    frames = driving_frames.float() / 127.5 - 1.0 if driving_frames.dtype == torch.uint8 else driving_frames.float()
    was_training = model.training
    model.eval()
    try:
        if body_only and model.body_encoder is not None:
            z = model.body_encoder(frames[None])
        else:
            z = model.encode_motion(frames[None])
    finally:
        model.train(was_training)
    return z[0].flatten(1).float().numpy()


# ---------------------------------------------------------------------------------------------- retrieval
def cross_view_retrieval(tokens_a, tokens_b) -> dict:
    """For frame t of view A rank view B's T frames by Euclidean token distance. -> dict of (T,) arrays:
    top1 / top5 (1.0 when frame t is among the 1 / 5 nearest; ties count against the hit), distance_ratio
    (distance to B's frame t / mean distance to B's other frames; < 1 = the same moment is nearer)."""
    a, b = np.asarray(tokens_a, np.float64), np.asarray(tokens_b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"tokens must both be (T, D), got {a.shape} and {b.shape}")
    T = a.shape[0]
    d = np.sqrt(np.maximum(((a[:, None] - b[None]) ** 2).sum(-1), 0.0))  # (T, T): A frame x B frame
    same = np.diag(d)
    # rank of the true frame = how many other frames are at least as near (a tie is not a hit)
    rank = (d <= same[:, None]).sum(1) - 1
    other = (d.sum(1) - same) / max(T - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(other > 0, same / other, np.nan)
    return {"top1": (rank < 1).astype(np.float64), "top5": (rank < 5).astype(np.float64), "distance_ratio": ratio}


def retrieval_chance(T: int) -> dict:
    """What a ranking that ignores the tokens scores on T frames."""
    return {"top1": 1.0 / T, "top5": min(5, T) / T}


# ---------------------------------------------------------------------------------------------- pose following
def person_height_px(joints2d, visible) -> np.ndarray:
    """(T, J, 2), (T, J) -> (T,) the person's size in px: the larger side of the visible joints' 2D bounding box.
    For an upright person that is the vertical extent (head to ankle joints, a little under the body height);
    the larger side keeps the PCK threshold sensible for lying and crawling poses too. NaN with < 2 visible."""
    j = np.asarray(joints2d, np.float64)
    vis = np.asarray(visible, bool)
    lo = np.where(vis[..., None], j, np.inf).min(1)
    hi = np.where(vis[..., None], j, -np.inf).max(1)
    size = (hi - lo).max(1)
    return np.where(vis.sum(1) >= 2, size, np.nan)


def pose_following(pred, gt, visible, person_height_px, threshold: float = 0.1) -> dict:
    """pred, gt (T, J, 2) px, visible (T, J) bool, person_height_px (T,) -> dict(pck (T,), err_px (T,)):
    per frame the share of visible joints within threshold x height of the ground truth, and their mean distance
    in px. Frames without visible joints are NaN."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    vis = np.asarray(visible, bool)
    if pred.shape != gt.shape or vis.shape != gt.shape[:2]:
        raise ValueError(f"pred {pred.shape}, gt {gt.shape} and visible {vis.shape} do not match")
    dist = np.linalg.norm(pred - gt, axis=-1)
    n = vis.sum(1)
    limit = threshold * np.asarray(person_height_px, np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        pck = np.where(n > 0, ((dist <= limit) & vis).sum(1) / n, np.nan)
        err = np.where(n > 0, np.where(vis, dist, 0.0).sum(1) / n, np.nan)
    return {"pck": pck, "err_px": err}


def copy_driving_pose(driving_joints2d, target_joints2d, visible, person_height_px, threshold: float = 0.1) -> dict:
    """The "copy driving pose" reference: the driving view's own ground-truth 2D joints taken as the prediction
    for the target view. On a reconstruction pair it is perfect; across views it shows what ignoring the target's
    camera costs, so a generator that follows motion in the target's view should beat it."""
    return pose_following(driving_joints2d, target_joints2d, visible, person_height_px, threshold)


def hold_first_frame_pose(target_joints2d, visible, person_height_px, threshold: float = 0.1) -> dict:
    """The "still reference" reference: the target's first-frame 2D joints held for every frame, i.e. what a video
    that copies the reference image and never moves scores. Generated videos that follow motion beat it; videos
    below it do not even keep the reference's person where it was (a generation-quality limit, not a motion one)."""
    target = np.asarray(target_joints2d, np.float64)
    still = np.repeat(target[:1], len(target), axis=0)
    return pose_following(still, target, visible, person_height_px, threshold)
