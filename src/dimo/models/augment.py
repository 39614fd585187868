"""Driving-frame augmentations (paper Sec. 3.2), pure torch (no torchvision).

* Random perspective warp + light scale/translate, folded into ONE homography per clip and applied to every frame
  of that clip, so the motion is preserved while the 2D projection changes (view-agnostic learning).
* Appearance jitter (brightness, contrast, saturation, hue), also one draw per clip (per-frame draws would add
  flicker that the encoder could mistake for motion), against identity leakage from the driving frames.

Identity when `enabled=False` or in eval mode (inference). Randomness comes only from the torch.Generator passed
in, drawn on that generator's device (`draws`) and moved to the frames' device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import draws

# RGB <-> YIQ: hue rotation = rotating the (I, Q) chroma plane, a cheap stand-in for an HSV hue shift.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


@dataclass
class AugmentConfig:
    enabled: bool = True
    perspective: float = 0.15  # max corner displacement, fraction of the half-size (normalised coords)
    scale: tuple[float, float] = (0.85, 1.1)
    translate: float = 0.08  # max shift, fraction of the half-size
    brightness: float = 0.3  # factor in [1-b, 1+b]
    contrast: float = 0.3
    saturation: float = 0.4
    hue: float = 0.08  # max rotation, fraction of a full turn
    p_spatial: float = 1.0  # probability that a clip gets the warp
    p_color: float = 0.8  # probability that a clip gets the jitter

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, device) -> torch.Tensor:
    return lo + (hi - lo) * draws.rand(n, g, device)


def homography_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Direct linear transform: (N, 4, 2) src, dst -> (N, 3, 3) H with H @ [src, 1] ~ [dst, 1]."""
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    A = torch.cat([rows_u, rows_v], dim=1)  # (N, 8, 8)
    b = torch.cat([u, v], dim=1)
    h = torch.linalg.solve(A, b)
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


def random_warp(n: int, cfg: AugmentConfig, g: torch.Generator | None, device) -> torch.Tensor:
    """(n, 3, 3) homographies mapping OUTPUT normalised coords to INPUT ones (what grid_sample needs)."""
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=device).expand(n, 4, 2)
    s = _uniform(n, *cfg.scale, g, device)[:, None, None]
    shift = (draws.rand((n, 1, 2), g, device) * 2 - 1) * cfg.translate
    jitter = (draws.rand((n, 4, 2), g, device) * 2 - 1) * cfg.perspective
    dst = corners * s + shift + jitter  # where the input's corners land in the output
    apply = draws.rand(n, g, device) < cfg.p_spatial
    dst = torch.where(apply[:, None, None], dst, corners)
    return homography_from_points(dst, corners)


def warp_frames(frames: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """frames (B, T, C, H, W); homography (B, 3, 3) output->input in normalised coords; same warp for all T."""
    B, T, C, H, W = frames.shape
    ys = (torch.arange(H, device=frames.device) + 0.5) / H * 2 - 1
    xs = (torch.arange(W, device=frames.device) + 0.5) / W * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, -1, 3)  # (1, HW, 3)
    mapped = pts @ homography.transpose(1, 2).to(pts.dtype)  # (B, HW, 3)
    grid = (mapped[..., :2] / mapped[..., 2:].clamp_min(1e-6)).view(B, H, W, 2)
    # One grid per clip, the clip's T frames as T*C channels: grid_sample derives the bilinear weights once per
    # output pixel and reuses them for every channel (per frame it would derive them T times). Same numbers.
    out = F.grid_sample(frames.reshape(B, T * C, H, W).float(), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out.view(B, T, C, H, W).to(frames.dtype)


def color_jitter(frames: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None) -> torch.Tensor:
    """frames (B, T, 3, H, W) in [-1, 1]; one set of factors per clip."""
    B, device = frames.shape[0], frames.device
    x = (frames.float() + 1) / 2
    apply = (draws.rand(B, g, device) < cfg.p_color).float()
    view = (B, 1, 1, 1, 1)

    def factor(amount: float) -> torch.Tensor:  # 1 for clips that skip the jitter
        f = _uniform(B, 1 - amount, 1 + amount, g, device)
        return (apply * f + (1 - apply)).view(view)

    b, c, s = factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation)
    angle = (apply * _uniform(B, -cfg.hue, cfg.hue, g, device) * 2 * math.pi).view(B, 1, 1, 1)
    x = x * b
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    x = (x - mean) * c + mean
    gray = (x * _RGB2YIQ[0].to(device).view(1, 1, 3, 1, 1)).sum(2, keepdim=True)
    x = gray + (x - gray) * s
    yiq = torch.einsum("ij,btjhw->btihw", _RGB2YIQ.to(device), x)
    i, q = yiq[:, :, 1], yiq[:, :, 2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    yiq = torch.stack([yiq[:, :, 0], i * cos - q * sin, i * sin + q * cos], dim=2)
    x = torch.einsum("ij,btjhw->btihw", _YIQ2RGB.to(device), yiq)
    return (x.clamp(0, 1) * 2 - 1).to(frames.dtype)


class DrivingAugment(nn.Module):
    """Clip-consistent augmentation of driving frames (B, T, 3, H, W) in [-1, 1]; identity when off."""

    def __init__(self, config: AugmentConfig | dict | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = AugmentConfig(**config)
        self.config = config or AugmentConfig()

    @property
    def active(self) -> bool:
        return self.config.enabled and self.training

    def forward(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.active:
            return frames
        warp = random_warp(frames.shape[0], self.config, generator, frames.device)
        return color_jitter(warp_frames(frames, warp), self.config, generator)
