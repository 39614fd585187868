"""What the study measures on each trained unit, on held-out groups (`study.measure.splits`, never trained on),
with the metrics of `dimo.evaluation.motion_control` (per pair, so units compare pair by pair):

* motion dependence: the paired flow-matching loss gap, true vs mismatched driving clip (also after each stage:
  the unit's curve);
* pose following: videos generated from the cached conditions (reference = the target's first latent, prompt =
  its caption, tokens from the driving clip), read by the pose probe, against the target's ground-truth 2D joints;
  references: the same model with the null motion token, copying the driving view's own 2D joints, holding the
  target's first-frame pose (a video that never moves), and the codec's
  reconstruction of the target (the best a generated video can score through this codec and probe);
* cross-view retrieval of per-frame body tokens between the synchronised views of each held-out group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from dimo import clip_table
from dimo.evaluation import motion_control as mc
from dimo.evaluation import pose_probe
from dimo.evaluation.metrics import psnr_per_frame, ssim_per_frame
from dimo.training.batches import PairBatches


def held_out_pairs(clips: pd.DataFrame, splits, max_pairs: int | None = None) -> pd.DataFrame:
    """Reconstruction pairs of every held-out clip with ground truth (synthetic renders) and cross-view pairs of
    every such group with >= 2 views (at most `max_pairs` of each kind): pair_id, kind, driving_clip_id,
    target_clip_id, group_id (and the driving clip's motion_name)."""
    held = clips[clips["split"].isin(list(splits)) & clips["gt_path"].fillna("").astype(bool)].sort_values("clip_id")
    rows = [("reconstruction", c, c, g) for c, g in zip(held["clip_id"], held["group_id"])]
    for group, members in held.groupby("group_id"):
        ids = sorted(members["clip_id"])
        rows += [("cross_view", a, b, group) for a in ids for b in ids if a != b]
    pairs = pd.DataFrame(rows, columns=["kind", "driving_clip_id", "target_clip_id", "group_id"])
    if "motion_name" in held:  # mismatched driving clips are drawn from other motions, not only other groups
        pairs["motion_name"] = pairs["driving_clip_id"].map(dict(zip(held["clip_id"], held["motion_name"])))
    pairs.insert(0, "pair_id", [f"{k[0]}:{d}>{t}" for k, d, t in zip(pairs["kind"], pairs["driving_clip_id"],
                                                                       pairs["target_clip_id"])])
    return pairs.groupby("kind", sort=False).head(max_pairs).reset_index(drop=True) if max_pairs else pairs


def gt_joints(gt: dict, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, 13, 2) ground-truth 2D body joints of a clip (pixels of its frames) and (T, 13) in-frame flags."""
    record = clip_table.load_clip(gt, clip_id, "synthetic_ground_truth")
    joints = np.asarray(record["keypoints_2d"], np.float32)[:, list(pose_probe.BODY_13)]
    height, width = (int(s) for s in np.asarray(record["image_size"]))  # (height, width) of the render
    return joints, pose_probe.in_frame(joints, height, width)


def fit_probe(clips: pd.DataFrame, frames: dict, gt: dict, params: dict, seed: int) -> pose_probe.PoseProbe:
    """The pose probe, fitted on the train split's ground-truth renders only (never on generated videos)."""
    train = clips[(clips["split"] == "train") & clips["clip_id"].isin(list(gt))]  # renders with ground truth
    x, j, v = [], [], []
    for clip_id in train["clip_id"]:
        joints, visible = gt_joints(gt, clip_id)
        x.append(clip_table.load_clip(frames, clip_id).frames)
        j.append(joints)
        v.append(visible)
    return pose_probe.fit_pose_probe(np.concatenate(x), np.concatenate(j), np.concatenate(v), params, seed)


def _uint8(video: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    return ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def codec_and_probe_reference(pairs: pd.DataFrame, frames: dict, gt: dict, codec, probe) -> dict:
    """The codec's PSNR / SSIM on the held-out clips, and the probe's own accuracy on their renders and on the
    codec's reconstructions of them (-> per clip values and means)."""
    out = {"psnr_db": [], "ssim": [], "probe_pck_renders": [], "probe_pck_codec": [], "probe_err_px_renders": [],
           "probe_err_px_codec": []}
    for clip_id in sorted(set(pairs["target_clip_id"])):
        video = clip_table.load_clip(frames, clip_id).frames
        recon = pose_probe.codec_roundtrip(codec, video)
        out["psnr_db"].append(float(np.mean(psnr_per_frame(recon[None], video[None]))))
        ssim = ssim_per_frame(recon[None], video[None])
        out["ssim"].append(float(np.mean(ssim)) if isinstance(ssim, np.ndarray) else float("nan"))
        joints, visible = gt_joints(gt, clip_id)
        for name, clip in (("renders", video), ("codec", recon)):
            acc = pose_probe.probe_accuracy(probe, clip, joints, visible)
            out[f"probe_pck_{name}"].append(acc["pck_mean"])
            out[f"probe_err_px_{name}"].append(acc["err_px_mean"])
    return {k: float(np.nanmean(v)) for k, v in out.items()} | {"clips": len(set(pairs["target_clip_id"]))}


def motion_gaps(model, pairs: pd.DataFrame, batches: PairBatches, params: dict, seed: int,
                pool: dict | None = None, people: dict | None = None) -> np.ndarray:
    """Per pair: the relative flow-loss gap with a driving clip of another motion (same noise, t, target);
    `pool`: more candidate driving clips (clip id -> motion), `people` (clip id -> identity): the same person's
    other motions first, when `params["mismatch_same_person"]` (see `mismatched_pairs`)."""
    people = people if params.get("mismatch_same_person", False) else None
    swapped = mc.mismatched_pairs(pairs, params["mismatch_seed"], pool=pool, clip_identity=people)
    true = [batches.example(r.driving_clip_id, r.target_clip_id) for r in pairs.itertuples()]
    other = [batches.example(r.driving_clip_id, r.target_clip_id) for r in swapped.itertuples()]
    return mc.motion_dependence_gaps(model, true, other, seed, params["gap_draws"])


@torch.no_grad()
def _generate(model, codec, example: dict, motion: str, params: dict, seed: int) -> np.ndarray:
    """One video from the cached conditions: `motion` = "driving" (the tokens) or "null" (no-motion reference)."""
    batch = {k: v[None] for k, v in example.items()}
    z = model.encode_motion(batch["driving_frames"], batch["hand_keypoints"], batch["wrist_keypoints"],
                            batch["pose_targets"])
    if motion == "null":
        z = model.generator.null_motion(1, z.shape[1]).to(z.dtype)
    latents = model.sample_latents(batch["reference_latents"], z, batch["text_embeddings"], batch["text_mask"],
                                   latent_shape=tuple(batch["target_latents"].shape), num_steps=params["steps"],
                                   guidance_text=params["guidance_text"], guidance_motion=params["guidance_motion"],
                                   generator=torch.Generator().manual_seed(seed))
    return _uint8(codec.decode(latents))


def pose_following(model, codec, probe, pairs: pd.DataFrame, batches: PairBatches, gt: dict, params: dict,
                   seed: int) -> pd.DataFrame:
    """Per pair: PCK and px error of the generated video (and of the null-motion video, the copy-driving-pose
    reference, and the still first-frame pose) against the target's ground-truth 2D joints."""
    rows, was_training = [], model.training
    model.eval()
    try:
        for r in pairs.itertuples():
            target, visible = gt_joints(gt, r.target_clip_id)
            driving, _ = gt_joints(gt, r.driving_clip_id)
            heights = mc.person_height_px(target, visible)
            example = batches.example(r.driving_clip_id, r.target_clip_id)
            row = {"pair_id": r.pair_id, "kind": r.kind}
            for name in ("driving", "null"):
                video = _generate(model, codec, example, name, params["generate"], seed)
                n = min(len(video), len(target))
                out = mc.pose_following(probe.predict(video[:n]), target[:n], visible[:n], heights[:n],
                                        params["pck_threshold"])
                suffix = "" if name == "driving" else "_null"
                row |= {f"pck{suffix}": float(np.nanmean(out["pck"])),
                        f"err_px{suffix}": float(np.nanmean(out["err_px"]))}
            copy = mc.copy_driving_pose(driving, target, visible, heights, params["pck_threshold"])
            row |= {"pck_copy": float(np.nanmean(copy["pck"])), "err_px_copy": float(np.nanmean(copy["err_px"]))}
            still = mc.hold_first_frame_pose(target, visible, heights, params["pck_threshold"])
            row |= {"pck_still": float(np.nanmean(still["pck"])), "err_px_still": float(np.nanmean(still["err_px"]))}
            rows.append(row)
    finally:
        model.train(was_training)
    return pd.DataFrame(rows)


def retrieval(model, pairs: pd.DataFrame, batches: PairBatches) -> pd.DataFrame:
    """Per cross-view pair (view A -> view B of one group): top-1 / top-5 retrieval of B's frames by A's per-frame
    body tokens, the same-frame / other-frame distance ratio, and chance. Empty for a model without a body encoder
    (SMPL control: its tokens come from the pose itself)."""
    if model.body_encoder is None:
        return pd.DataFrame(columns=["pair_id", "top1", "top5", "distance_ratio", "chance_top1"])
    tokens, rows = {}, []
    for r in pairs[pairs["kind"] == "cross_view"].itertuples():
        for c in (r.driving_clip_id, r.target_clip_id):
            if c not in tokens:
                tokens[c] = mc.frame_motion_tokens(model, batches.clip(c)["driving_frames"])
        a, b = tokens[r.driving_clip_id], tokens[r.target_clip_id]
        n = min(len(a), len(b))
        res = mc.cross_view_retrieval(a[:n], b[:n])
        rows.append({"pair_id": r.pair_id, "top1": float(res["top1"].mean()), "top5": float(res["top5"].mean()),
                     "distance_ratio": float(np.nanmean(res["distance_ratio"])),
                     "chance_top1": mc.retrieval_chance(n)["top1"]})
    return pd.DataFrame(rows)
