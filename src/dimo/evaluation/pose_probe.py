"""A small 2D keypoint regressor that reads people in toy renders, trained only on ground-truth renders.

mediapipe finds a person in most clean 128 px renders (88% of frames on 20 synthetic clips, none in the two run
clips) but rarely in generated or codec-blurred videos, and a missing detection is no measurement. The probe
always answers: conv features at 1/4 resolution -> one heatmap per joint -> soft-argmax (a differentiable
expected position), trained with a cross-entropy to a Gaussian around each visible joint plus an L1 loss on
the position. It is fitted on the train split's synthetic renders
and their projected keypoints (`keypoints_2d` of the gt npz), never on generated videos, and its own accuracy on
held-out and codec-reconstructed renders is reported beside every pose-following number (`probe_accuracy`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from dimo.evaluation.motion_control import person_height_px, pose_following

# 13 body joints of the 23 COCO-style keypoints (nose, shoulders, elbows, wrists, hips, knees, ankles): the eyes,
# ears and toes are a pixel or two apart at 128 px, and the generator is not asked to get them right.
BODY_13 = (0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)

FIT_DEFAULTS = {"input_size": 128, "width": 16, "epochs": 12, "batch_size": 32, "lr": 3e-3, "weight_decay": 1e-4,
                "shift_px": 8, "blur_prob": 0.3, "sigma_cells": 1.0, "max_seconds": None}


def _heatmap_loss(logits: torch.Tensor, uv: torch.Tensor, vis: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-entropy of each joint's softmax map against a Gaussian around the true position (sigma in cells):
    a dense signal that trains much faster than the coordinate loss alone."""
    N, J, h, w = logits.shape
    xs, ys = torch.arange(w, dtype=uv.dtype) + 0.5, torch.arange(h, dtype=uv.dtype) + 0.5  # cell centres
    dx = xs.view(1, 1, 1, w) - uv[..., 0, None, None] * w
    dy = ys.view(1, 1, h, 1) - uv[..., 1, None, None] * h
    target = (-(dx**2 + dy**2) / (2 * sigma**2)).flatten(2).softmax(-1)
    ce = -(target * logits.flatten(2).log_softmax(-1)).sum(-1)  # (N, J)
    return (ce * vis).sum() / vis.sum().clamp(min=1)


def in_frame(joints2d, height: int, width: int) -> np.ndarray:
    """(N, J, 2) px -> (N, J) bool: the joint projects inside the image (the renders carry no occlusion labels)."""
    j = np.asarray(joints2d)
    return (j[..., 0] >= 0) & (j[..., 0] < width) & (j[..., 1] >= 0) & (j[..., 1] < height)


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation),
                         nn.GroupNorm(min(8, cout), cout), nn.SiLU())


class PoseProbe(ModelMixin, ConfigMixin):
    """frames (N, 3, S, S) in [-1, 1] -> joints (N, J, 2) in [0, 1] image coordinates (x, y)."""

    @register_to_config
    def __init__(self, num_joints: int = 13, input_size: int = 128, width: int = 16):
        super().__init__()
        c = width
        # 1. features: S -> S/2 -> S/4 -> S/8 (dilated for a receptive field that spans the body), back to S/4
        self.down = nn.Sequential(_block(3, c, 2), _block(c, 2 * c, 2), _block(2 * c, 2 * c),
                                  _block(2 * c, 4 * c, 2), _block(4 * c, 4 * c, dilation=2))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                _block(4 * c, 2 * c))
        self.skip = nn.Conv2d(2 * c, 2 * c, 1)
        self.head = nn.Conv2d(2 * c, num_joints, 1)

    def heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> logits (N, J, S/4, S/4)."""
        f4 = self.down[:3](x)                       # (N, 2c, S/4, S/4)
        f8 = self.down[3:](f4)                      # (N, 4c, S/8, S/8)
        return self.head(self.up(f8) + self.skip(f4))

    def forward(self, x: torch.Tensor, return_heatmaps: bool = False):
        logits = self.heatmaps(x)
        N, J, h, w = logits.shape
        prob = logits.flatten(2).softmax(-1).view(N, J, h, w)
        # 2. soft-argmax: expected cell centre, in [0, 1] of the image
        xs = (torch.arange(w, device=x.device, dtype=prob.dtype) + 0.5) / w
        ys = (torch.arange(h, device=x.device, dtype=prob.dtype) + 0.5) / h
        uv = torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], -1)
        return (uv, logits) if return_heatmaps else uv

    def _inputs(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        s = self.config.input_size
        return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """frames uint8 (N, H, W, 3) -> joints (N, J, 2) in the frames' pixels (x, y)."""
        frames = np.asarray(frames)
        H, W = frames.shape[1:3]
        was_training = self.training
        self.eval()
        try:
            out = [self(self._inputs(frames[i: i + batch_size])) for i in range(0, len(frames), batch_size)]
        finally:
            self.train(was_training)
        uv = torch.cat(out).numpy() if out else np.zeros((0, self.config.num_joints, 2), np.float32)
        return (uv * np.array([W, H], np.float32)).astype(np.float32)


def _augment(x: torch.Tensor, uv: torch.Tensor, shift_px: int, blur_prob: float, g: torch.Generator):
    """Random integer shift (edge-padded) and, for some frames, a blur like the toy codec's: the probe has to read
    blurry generated frames, and is still trained on ground-truth renders only."""
    N, _, S, _ = x.shape
    if shift_px:
        pad = F.pad(x, (shift_px,) * 4, mode="replicate")
        dx, dy = (torch.randint(0, 2 * shift_px + 1, (2,), generator=g)).tolist()
        x = pad[:, :, dy: dy + S, dx: dx + S]
        uv = uv + torch.tensor([shift_px - dx, shift_px - dy], dtype=uv.dtype) / S
    if blur_prob > 0:
        blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
        pick = (torch.rand(N, generator=g) < blur_prob).view(N, 1, 1, 1)
        x = torch.where(pick, blurred, x)
    return x, uv


def fit_pose_probe(frames: np.ndarray, joints2d: np.ndarray, visible: np.ndarray, params: dict | None = None,
                   seed: int = 0) -> PoseProbe:
    """Fit a `PoseProbe` on ground-truth renders: frames uint8 (N, H, W, 3), joints2d (N, J, 2) px, visible (N, J).
    `params` override `FIT_DEFAULTS` (input_size, width, epochs, batch_size, lr, weight_decay, shift_px, blur_prob,
    sigma_cells, max_seconds: if set, training stops after the epoch that passes it, so the result then depends on
    the machine's speed). Deterministic for a seed on one thread count. Wall time, epochs done and the last
    batch's loss are in `probe.fit_seconds`, `fit_epochs`, `fit_loss`. On a busy 2-core machine one torch thread
    fits ~10x faster than two (`torch.set_num_threads(1)`)."""
    p = {**FIT_DEFAULTS, **(params or {})}
    frames, joints2d, visible = np.asarray(frames), np.asarray(joints2d, np.float32), np.asarray(visible, bool)
    N, H, W = frames.shape[:3]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = PoseProbe(num_joints=joints2d.shape[1], input_size=p["input_size"], width=p["width"])
    x_all = probe._inputs(frames)
    uv_all = torch.from_numpy(joints2d / np.array([W, H], np.float32))
    vis_all = torch.from_numpy(visible).float()
    opt = torch.optim.AdamW(probe.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    steps = p["epochs"] * max(1, -(-N // p["batch_size"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p["lr"], total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    start, loss = time.perf_counter(), torch.zeros(())
    probe.train()
    probe.fit_epochs = 0
    for _ in range(p["epochs"]):
        for idx in torch.randperm(N, generator=g).split(p["batch_size"]):
            x, uv = _augment(x_all[idx], uv_all[idx], p["shift_px"], p["blur_prob"], g)
            pred, logits = probe(x, return_heatmaps=True)
            vis = vis_all[idx]
            coord = ((pred - uv).abs().sum(-1) * vis).sum() / vis.sum().clamp(min=1)
            loss = _heatmap_loss(logits, uv, vis, p["sigma_cells"]) + 10.0 * coord
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        probe.fit_epochs += 1
        if p["max_seconds"] is not None and time.perf_counter() - start > p["max_seconds"]:
            break
    probe.eval()
    probe.fit_seconds = time.perf_counter() - start
    probe.fit_loss = float(loss.detach())
    return probe


def probe_accuracy(probe: PoseProbe, frames: np.ndarray, joints2d, visible, heights=None,
                   threshold: float = 0.1) -> dict:
    """The probe's own accuracy on renders with known joints: PCK at threshold x person height and px error.
    `heights` (N,) default to `motion_control.person_height_px` of the ground truth.
    -> dict(pck, err_px (N,) per frame; pck_mean, err_px_mean, err_px_median, frames)."""
    joints2d, visible = np.asarray(joints2d), np.asarray(visible, bool)
    heights = person_height_px(joints2d, visible) if heights is None else np.asarray(heights)
    out = pose_following(probe.predict(frames), joints2d, visible, heights, threshold)
    return {**out, "pck_mean": float(np.nanmean(out["pck"])), "err_px_mean": float(np.nanmean(out["err_px"])),
            "err_px_median": float(np.nanmedian(out["err_px"])), "frames": int(len(frames))}


@torch.no_grad()
def codec_roundtrip(codec, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the same clip encoded and decoded by a `LatentCodec` (T must be 1 + 4k): what the
    probe sees in a generated video at best."""
    x = torch.from_numpy(np.asarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    y = codec.decode(codec.encode(x))[0]
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
