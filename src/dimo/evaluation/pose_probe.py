"""A small 2D keypoint regressor that reads people in toy renders, trained only on ground-truth renders.

mediapipe finds a person in most clean 128 px renders (88% of frames on 20 synthetic clips, none in the two run
clips) but rarely in generated or codec-blurred videos, and a missing detection is no measurement. The probe
always answers, in two stages: `locate` reads the whole frame at 64 px, `refine` reads a 64 px crop around the
located joints (people are ~50 px tall in 128 px frames; in the crop they have one size). Each stage is a small
conv net with one heatmap per joint at 1/4 of its input and a soft-argmax (a differentiable expected position),
trained with a cross-entropy to a Gaussian around each visible joint plus an L1 loss on the position, on frames
scaled, rotated, shifted, mirrored (left/right joints swapped), blurred, down-sampled and noised: generated and
codec-reconstructed frames are blurry and their people stand anywhere. `predict` also reads each frame mirrored.
It is fitted on the train split's synthetic renders and their projected keypoints (`keypoints_2d` of the gt npz),
optionally plus their codec round-trips, never on generated videos, and its own accuracy on held-out and
codec-reconstructed renders is reported beside every pose-following number (`probe_accuracy`);
benchmarks/bench_pose_probe.py measures it.
"""

from __future__ import annotations

import math
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

# left/right pairs among BODY_13's positions (shoulders, elbows, wrists, hips, knees, ankles): a mirror swaps them
BODY_13_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12))

FIT_DEFAULTS = {"input_size": 64, "crop_size": 80, "crop_scale_jitter": 0.15, "crop_shift_jitter": 0.15,
                "width": 32, "epochs": 12, "batch_size": 16, "lr": 3e-3, "weight_decay": 1e-4,
                "sigma_cells": 1.0, "max_seconds": None,
                "augment": True, "shift_px": 24, "scale_max": 1.4, "rotate_deg": 15.0, "flip_prob": 0.5,
                "flip_pairs": None, "colour_jitter": 0.2, "blur_prob": 0.4, "blur_max_px": 2.5,
                "downsample_prob": 0.2, "noise_std": 0.05}


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


class _Residual(nn.Module):
    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv1 = _block(channels, channels, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm = nn.GroupNorm(min(8, channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.norm(self.conv2(self.conv1(x))))


class _HeatmapNet(nn.Module):
    """(N, 3, S, S) in [-1, 1] -> joints (N, J, 2) in [0, 1] of the input (x, y), and heatmap logits."""

    def __init__(self, num_joints: int, width: int):
        super().__init__()
        c = width
        # 1. features at S/4 from a 4x4 patch stem (full-resolution convs cost the most and add little on
        #    people ~50 px tall), then S/8 with dilations for a receptive field that spans the body, back to S/4
        self.stem = nn.Sequential(nn.Conv2d(3, c, 4, 4), nn.GroupNorm(min(8, c), c), nn.SiLU(),
                                  _block(c, c), _Residual(c))
        self.down = nn.Sequential(_block(c, 2 * c, stride=2), _Residual(2 * c, 2), _Residual(2 * c, 4))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                _block(2 * c, c))
        self.skip = nn.Conv2d(c, c, 1)
        self.head = nn.Sequential(_block(c, c), nn.Conv2d(c, num_joints, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f4 = self.stem(x)                                         # (N, c, S/4, S/4)
        logits = self.head(self.up(self.down(f4)) + self.skip(f4))  # (N, J, S/4, S/4)
        N, J, h, w = logits.shape
        prob = logits.flatten(2).softmax(-1).view(N, J, h, w)
        # 2. soft-argmax: expected cell centre, in [0, 1] of the input
        xs = (torch.arange(w, device=x.device, dtype=prob.dtype) + 0.5) / w
        ys = (torch.arange(h, device=x.device, dtype=prob.dtype) + 0.5) / h
        return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], -1), logits


def person_box(uv: torch.Tensor, vis: torch.Tensor, height: int, width: int, margin: float = 0.3,
               min_side_px: float = 24.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints (N, J, 2) in [0, 1], visible (N, J) -> a square box around them: centre (N, 2) in [0, 1] and
    half-side (N, 2) in [0, 1] units of each axis (square in pixels), `margin` of the joints' extent added on
    each side."""
    big = torch.where(vis[..., None] > 0, uv, torch.full_like(uv, float("inf")))
    small = torch.where(vis[..., None] > 0, uv, torch.full_like(uv, -float("inf")))
    lo, hi = big.amin(1), small.amax(1)
    lo, hi = torch.where(torch.isfinite(lo), lo, 0.0), torch.where(torch.isfinite(hi), hi, 1.0)
    scale = torch.tensor([width, height], dtype=uv.dtype)
    side_px = ((hi - lo) * scale).amax(-1).clamp(min=min_side_px) * (1 + 2 * margin)
    return (lo + hi) / 2, side_px[:, None] / (2 * scale)


def _crop(x: torch.Tensor, centre: torch.Tensor, half: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size): the boxes, resampled (edges replicated)."""
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = 2 * half[:, 0], 2 * half[:, 1]
    theta[:, :, 2] = 2 * centre - 1
    grid = F.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class PoseProbe(ModelMixin, ConfigMixin):
    """frames (N, 3, H, W) in [-1, 1] -> joints (N, J, 2) in [0, 1] image coordinates (x, y), in two stages:
    `locate` reads the whole frame at input_size, then `refine` reads a crop_size crop around the located joints
    (the person at a fixed size, so a small net resolves small people). crop_size 0: one stage."""

    @register_to_config
    def __init__(self, num_joints: int = 13, input_size: int = 64, width: int = 32, flip_pairs: tuple = (),
                 crop_size: int = 80):
        super().__init__()
        # joints a mirror swaps: `predict` also reads each frame mirrored and averages (test-time flip)
        perm = list(range(num_joints))
        for a, b in flip_pairs:
            perm[a], perm[b] = b, a
        self.register_buffer("flip_perm", torch.tensor(perm), persistent=False)
        self.locate = _HeatmapNet(num_joints, width)
        self.refine = _HeatmapNet(num_joints, width) if crop_size else None

    def _located(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.config.input_size
        return self.locate(F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uv = self._located(x)[0]
        if self.refine is None:
            return uv
        centre, half = person_box(uv, torch.ones(uv.shape[:2]), *x.shape[2:])
        return centre[:, None] + (2 * self.refine(_crop(x, centre, half, self.config.crop_size))[0] - 1) * half[:, None]

    def _inputs(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def _read(self, x: torch.Tensor) -> torch.Tensor:
        uv = self(x)
        if not self.config.flip_pairs:
            return uv
        mirrored = self(x.flip(-1))[:, self.flip_perm]
        return (uv + torch.stack([1 - mirrored[..., 0], mirrored[..., 1]], -1)) / 2

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """frames uint8 (N, H, W, 3) -> joints (N, J, 2) in the frames' pixels (x, y)."""
        frames = np.asarray(frames)
        H, W = frames.shape[1:3]
        was_training = self.training
        self.eval()
        try:
            out = [self._read(self._inputs(frames[i: i + batch_size])) for i in range(0, len(frames), batch_size)]
        finally:
            self.train(was_training)
        uv = torch.cat(out).numpy() if out else np.zeros((0, self.config.num_joints, 2), np.float32)
        return (uv * np.array([W, H], np.float32)).astype(np.float32)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), sigma in px, edges replicated."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).repeat(x.shape[1], 1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.unsqueeze(2), groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.unsqueeze(3), groups=x.shape[1])


def _geometric(x, uv, vis, p: dict, g: torch.Generator):
    """Random scale, rotation, shift and left/right flip (joints relabelled by `p["flip_pairs"]`) of each frame:
    the people in generated videos stand anywhere, at any size, and a probe fitted on ~60 clips must not learn
    their places by heart. Joints pushed out of the frame stop counting."""
    N, _, S, _ = x.shape
    u = lambda: torch.rand(N, generator=g)  # noqa: E731
    scale = torch.exp((2 * u() - 1) * math.log(p["scale_max"]))          # output size / input size
    angle = (2 * u() - 1) * math.radians(p["rotate_deg"])
    flip = torch.where(u() < p["flip_prob"], -1.0, 1.0)
    shift = (2 * torch.rand(N, 2, generator=g) - 1) * (2 * p["shift_px"] / S)  # normalised [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # output -> input in normalised coordinates: p_in = A @ p_out + t (what affine_grid takes)
    A = torch.stack([torch.stack([cos * flip, -sin], -1), torch.stack([sin * flip, cos], -1)], -2)
    theta = torch.cat([A, shift[..., None]], -1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    p_in = uv * 2 - 1
    p_out = torch.einsum("nij,nkj->nki", torch.linalg.inv(A), p_in - shift[:, None])
    uv = (p_out + 1) / 2
    if p["flip_pairs"]:
        perm = torch.arange(uv.shape[1])
        for a, b in p["flip_pairs"]:
            perm[a], perm[b] = b, a
        flipped = (flip < 0).view(N, 1, 1)
        uv = torch.where(flipped, uv[:, perm], uv)
        vis = torch.where(flipped[..., 0], vis[:, perm], vis)
    inside = ((uv >= 0) & (uv < 1)).all(-1).float()
    return x, uv, vis * inside


def _photometric(x: torch.Tensor, p: dict, g: torch.Generator) -> torch.Tensor:
    """Colour gain, blur, down-up sampling and noise: a blurry codec and a generator lose detail and shift
    colours, and the probe has to read their frames while it is trained on ground-truth renders only."""
    N, _, S, _ = x.shape
    x = (x + 1) * (1 + p["colour_jitter"] * (2 * torch.rand(N, 3, 1, 1, generator=g) - 1)) - 1
    if p["blur_prob"] > 0:
        sigma = float(p["blur_max_px"]) * float(torch.rand((), generator=g)) + 0.3
        pick = (torch.rand(N, generator=g) < p["blur_prob"]).view(N, 1, 1, 1)
        x = torch.where(pick, _gaussian_blur(x, sigma), x)
    if p["downsample_prob"] > 0:
        small = F.interpolate(x, scale_factor=0.25 + 0.25 * float(torch.rand((), generator=g)), mode="area")
        pick = (torch.rand(N, generator=g) < p["downsample_prob"]).view(N, 1, 1, 1)
        x = torch.where(pick, F.interpolate(small, size=(S, S), mode="bilinear", align_corners=False), x)
    if p["noise_std"] > 0:
        x = x + p["noise_std"] * torch.rand(N, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1)


def _joint_loss(pred, logits, uv, vis, sigma: float) -> torch.Tensor:
    coord = ((pred - uv).abs().sum(-1) * vis).sum() / vis.sum().clamp(min=1)
    return _heatmap_loss(logits, uv, vis, sigma) + 10.0 * coord


def _jittered_crop(x, uv, vis, size: int, p: dict, g: torch.Generator):
    """The refine stage's training input: a crop around the true joints, its centre and size jittered by about
    what the locate stage gets wrong; joints in the crop's [0, 1] units, those outside stop counting."""
    centre, half = person_box(uv, vis, *x.shape[2:])
    N = len(x)
    half = half * torch.exp((2 * torch.rand(N, 1, generator=g) - 1) * p["crop_scale_jitter"])
    centre = centre + (2 * torch.rand(N, 2, generator=g) - 1) * p["crop_shift_jitter"] * half
    uv_crop = (uv - centre[:, None]) / (2 * half[:, None]) + 0.5
    inside = ((uv_crop >= 0) & (uv_crop < 1)).all(-1).float()
    return _crop(x, centre, half, size), uv_crop, vis * inside


def _augment(x, uv, vis, p: dict, g: torch.Generator):
    if p["augment"]:
        x, uv, vis = _geometric(x, uv, vis, p, g)
        x = _photometric(x, p, g)
    return x, uv, vis


def fit_pose_probe(frames: np.ndarray, joints2d: np.ndarray, visible: np.ndarray, params: dict | None = None,
                   seed: int = 0) -> PoseProbe:
    """Fit a `PoseProbe` on ground-truth renders: frames uint8 (N, H, W, 3), joints2d (N, J, 2) px, visible (N, J).
    `params` override `FIT_DEFAULTS`: net (input_size of the locate stage, crop_size of the refine stage, 0 for
    one stage, width), refine crops (crop_scale_jitter, crop_shift_jitter), schedule (epochs, batch_size, lr,
    weight_decay,
    max_seconds: if set, training stops after the epoch that passes it, so the result then depends on the
    machine's speed), loss (sigma_cells) and augmentation (augment: False turns all of it off; shift_px,
    scale_max, rotate_deg, flip_prob with flip_pairs, the joint pairs a mirror swaps (default: BODY_13's
    left/right, only when J is 13); colour_jitter, blur_prob, blur_max_px, downsample_prob, noise_std).
    To fit on codec round-trips too, pass them as more frames with the same joints. Deterministic for a seed
    on one thread count. Wall and CPU time, epochs done and the last batch's loss are in `probe.fit_seconds`,
    `fit_cpu_seconds`, `fit_epochs`, `fit_loss`. On a busy 2-core machine one torch thread fits ~10x faster than
    two (`torch.set_num_threads(1)`)."""
    p = {**FIT_DEFAULTS, **(params or {})}
    frames, joints2d, visible = np.asarray(frames), np.asarray(joints2d, np.float32), np.asarray(visible, bool)
    N, H, W = frames.shape[:3]
    if p["flip_pairs"] is None:
        p["flip_pairs"] = BODY_13_FLIP_PAIRS if joints2d.shape[1] == len(BODY_13) else ()
    torch.set_flush_denormal(True)  # CPU: denormal floats in small conv nets cost several times the time
    mirrored = p["augment"] and p["flip_prob"] > 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = PoseProbe(num_joints=joints2d.shape[1], input_size=p["input_size"], width=p["width"],
                          flip_pairs=tuple(map(tuple, p["flip_pairs"])) if mirrored else (),
                          crop_size=p["crop_size"])
    x_all = probe._inputs(frames)
    uv_all = torch.from_numpy(joints2d / np.array([W, H], np.float32))
    vis_all = torch.from_numpy(visible).float()
    opt = torch.optim.AdamW(probe.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    steps = p["epochs"] * max(1, -(-N // p["batch_size"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p["lr"], total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    start, cpu_start, loss = time.perf_counter(), time.process_time(), torch.zeros(())
    probe.train()
    probe.fit_epochs = 0
    for _ in range(p["epochs"]):
        for idx in torch.randperm(N, generator=g).split(p["batch_size"]):
            x, uv, vis = _augment(x_all[idx], uv_all[idx], vis_all[idx], p, g)
            loss = _joint_loss(*probe._located(x), uv, vis, p["sigma_cells"])
            if probe.refine is not None:
                crop, uv_crop, vis_crop = _jittered_crop(x, uv, vis, probe.config.crop_size, p, g)
                loss = loss + _joint_loss(*probe.refine(crop), uv_crop, vis_crop, p["sigma_cells"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        probe.fit_epochs += 1
        if p["max_seconds"] is not None and time.perf_counter() - start > p["max_seconds"]:
            break
    probe.eval()
    probe.fit_seconds = time.perf_counter() - start
    probe.fit_cpu_seconds = time.process_time() - cpu_start
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
