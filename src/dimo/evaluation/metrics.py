"""The quantitative metrics of 3DiMo's Table 1, under the DisCo / Animate Anyone protocol.

Inputs are paired videos: `generated[i]` is compared with `target[i]`. A video is channels-last (T, H, W, C),
C = 3 (or 1, repeated to RGB for the networks), uint8 or float in [0, 1]; a batch is (N, T, H, W, C) or a list
of videos (lengths may differ between pairs, never within one).

- SSIM, PSNR, LPIPS: per frame pair, then averaged over every frame of every video (each frame weighs the same).
- FID: the Fréchet distance between InceptionV3 pool3 features of all generated frames and all target frames.
- FVD: the Fréchet distance between I3D features of 16-frame clips (StyleGAN-V's FVD).
A metric whose weights are missing, or that the data cannot support, comes back as `MetricUnavailable`, never
as a number. Mismatched or malformed inputs raise ValueError. Which of them the benchmark reports, and how, is
`dimo.evaluation.registry`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from .common import MetricUnavailable, WeightsNotFound, resolve
from .i3d import I3D_WEIGHTS_NAME, load_i3d
from .inception import FID_WEIGHTS_NAME, load_fid_inception
from .lpips_net import PLANS, load_lpips

__all__ = ["MetricUnavailable", "WeightsConfig", "ssim", "psnr", "lpips", "fid", "fvd", "ssim_per_frame",
           "psnr_per_frame", "lpips_per_frame", "frechet_distance", "feature_stats"]

Video = np.ndarray | torch.Tensor
Videos = Video | Sequence[Video]

SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5: the 11x11 window of skimage's gaussian_weights mode


@dataclass
class WeightsConfig:
    """Where the metric networks' weights are, and how to run them. Relative paths: from the project root."""

    lpips_dir: str | Path = ".cache/weights/lpips"
    inception_path: str | Path = f".cache/weights/fid/{FID_WEIGHTS_NAME}"
    i3d_path: str | Path = f".cache/weights/fvd/{I3D_WEIGHTS_NAME}"
    fvd_num_frames: int = 16
    fvd_clips: str = "all"  # "all": every non-overlapping clip of each video; "first": frames [0, 16) only
    device: str = "cpu"
    batch_size: int = 16

    @classmethod
    def from_any(cls, cfg: WeightsConfig | Mapping | None) -> WeightsConfig:
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, Mapping):
            raise TypeError(f"weights_config must be a WeightsConfig, a mapping or None, not {type(cfg).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(cfg) - known):
            raise ValueError(f"unknown weights_config keys {unknown}; known: {sorted(known)}")
        return cls(**cfg)


# ----------------------------------------------------------------------------------------------- inputs


def _as_videos(x: Videos, name: str) -> list[torch.Tensor]:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        if x.ndim == 5:
            items = list(x)
        elif x.ndim == 4:
            items = [x]
        else:
            raise ValueError(f"{name}: expected a video (T, H, W, C) or a batch (N, T, H, W, C), got shape "
                             f"{tuple(x.shape)}")
    elif isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
        items = list(x)
    else:
        raise TypeError(f"{name}: expected an array, a tensor or a list of videos, not {type(x).__name__}")
    if not items:
        raise ValueError(f"{name}: no videos")
    out = []
    for i, v in enumerate(items):
        v = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.detach().cpu()
        if v.ndim != 4 or v.shape[-1] not in (1, 3) or min(v.shape) == 0:
            raise ValueError(f"{name}[{i}]: expected a channels-last video (T, H, W, C) with C = 1 or 3, got shape "
                             f"{tuple(v.shape)}")
        if v.dtype != torch.uint8 and not v.dtype.is_floating_point:
            raise ValueError(f"{name}[{i}]: expected uint8 or float frames, got {v.dtype}")
        if v.dtype.is_floating_point:
            lo, hi = float(v.min()), float(v.max())
            if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
                raise ValueError(f"{name}[{i}]: float frames must lie in [0, 1], got [{lo}, {hi}] (clamp first)")
        out.append(v)
    return out


def _pairs(generated: Videos, target: Videos) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g, t = _as_videos(generated, "generated"), _as_videos(target, "target")
    if len(g) != len(t):
        raise ValueError(f"generated has {len(g)} videos but target has {len(t)}")
    for i, (a, b) in enumerate(zip(g, t)):
        if a.shape != b.shape:
            raise ValueError(f"video {i}: generated shape {tuple(a.shape)} != target shape {tuple(b.shape)} "
                             "(T, H, W, C): frame count, frame size and channels must match")
    return list(zip(g, t))


def _unit(v: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Frames on [0, 1]: uint8 / 255 or floats as given (data_range = 1 from here on)."""
    return v.to(dtype) / 255.0 if v.dtype == torch.uint8 else v.to(dtype)


def _nchw_rgb(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, C) on [0, 1] -> (T, 3, H, W) for the RGB networks."""
    x = frames.permute(0, 3, 1, 2)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


# ----------------------------------------------------------------------------------------------- SSIM / PSNR


def _gaussian_1d(dtype=torch.float64) -> torch.Tensor:
    # scipy.ndimage.gaussian_filter's kernel (sigma 1.5, truncate 3.5), normalised over its 11 taps
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype)
    w = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _ssim_frames(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per frame of float64 (T, H, W, C) on [0, 1] = skimage's channel_axis=-1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1.

    skimage filters the whole image (reflect padding) and then averages only pixels at least 5 px from the border,
    which never see the padding: a 'valid' convolution gives exactly those pixels."""
    t, h, w, c = a.shape
    k = _gaussian_1d()
    kh, kw = k.view(1, 1, -1, 1), k.view(1, 1, 1, -1)
    x = a.permute(0, 3, 1, 2).reshape(t * c, 1, h, w)
    y = b.permute(0, 3, 1, 2).reshape(t * c, 1, h, w)
    m = F.conv2d(F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), kh), kw).chunk(5)
    ux, uy, uxx, uyy, uxy = m
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy  # population (co)variances: cov_norm = 1
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(t, c, -1).mean(-1).mean(-1)  # per channel, then over channels, as skimage


def _too_small_for_ssim(pairs) -> str | None:
    for a, _ in pairs:
        if min(a.shape[1:3]) < 2 * SSIM_RADIUS + 1:
            return f"frames of {tuple(a.shape[1:3])} px are smaller than the 11x11 SSIM window"
    return None


def ssim_per_frame(generated: Videos, target: Videos, frames_per_chunk: int = 8) -> np.ndarray | MetricUnavailable:
    """SSIM of every frame pair, videos concatenated in order."""
    pairs = _pairs(generated, target)
    if reason := _too_small_for_ssim(pairs):
        return MetricUnavailable("ssim", reason)
    out = []
    for a, b in pairs:
        for s in _chunks(a.shape[0], frames_per_chunk):  # float64 maps of a whole video can be large
            out.append(_ssim_frames(_unit(a[s], torch.float64), _unit(b[s], torch.float64)))
    return torch.cat(out).numpy()


def psnr_per_frame(generated: Videos, target: Videos) -> np.ndarray:
    """PSNR of every frame pair in dB (data range 1 on [0, 1] = 255 on uint8); identical frames give inf."""
    out = []
    for a, b in _pairs(generated, target):
        mse = (_unit(a, torch.float64) - _unit(b, torch.float64)).pow(2).flatten(1).mean(1)
        out.append(10 * torch.log10(1.0 / mse))  # mse == 0 -> inf, as skimage
    return torch.cat(out).numpy()


def ssim(generated: Videos, target: Videos) -> float | MetricUnavailable:
    per = ssim_per_frame(generated, target)
    return per if isinstance(per, MetricUnavailable) else float(per.mean())


def psnr(generated: Videos, target: Videos) -> float:
    return float(psnr_per_frame(generated, target).mean())


# ----------------------------------------------------------------------------------------------- network caches

_NETS: dict[tuple, torch.nn.Module] = {}


def _cached(kind: str, path: Path, device: str, loader):
    """Load a network once per (file version, device): evaluation calls the same nets many times."""
    key = (kind, str(path), path.stat().st_mtime_ns if path.exists() else None, str(device))
    if key not in _NETS:
        _NETS[key] = loader()
    return _NETS[key]


def _lpips_min_size(backbone: str) -> int:
    """Smallest square frame for which every LPIPS tap still has at least one pixel."""
    for size in range(1, 512):
        s = size
        for kind, *rest in PLANS[backbone]:
            if kind == "conv":
                s = (s + 2 * rest[4] - rest[2]) // rest[3] + 1
            elif kind == "pool":
                s = (s - rest[0]) // rest[1] + 1
            if s < 1:
                break
        else:
            return size
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------- LPIPS


def lpips_per_frame(generated: Videos, target: Videos, backbone: str = "alex",
                    weights_dir: str | Path = WeightsConfig.lpips_dir, device: str = "cpu",
                    batch_size: int = 16) -> np.ndarray | MetricUnavailable:
    name = f"lpips_{backbone}"
    if backbone not in PLANS:
        raise ValueError(f"unknown LPIPS backbone {backbone!r}; expected one of {sorted(PLANS)}")
    pairs = _pairs(generated, target)
    need = _lpips_min_size(backbone)
    if min(min(a.shape[1:3]) for a, _ in pairs) < need:
        return MetricUnavailable(name, f"frames must be at least {need}x{need} px for the {backbone} backbone")
    path = resolve(weights_dir) / f"{backbone}.safetensors"
    try:
        net = _cached(name, path, device, lambda: load_lpips(backbone, weights_dir, device))
    except WeightsNotFound as err:
        return MetricUnavailable(name, str(err))
    out = []
    with torch.no_grad():
        for a, b in pairs:
            for s in _chunks(a.shape[0], batch_size):
                x0 = _nchw_rgb(_unit(a[s])) * 2 - 1  # LPIPS takes images on [-1, 1]
                x1 = _nchw_rgb(_unit(b[s])) * 2 - 1
                out.append(net(x0.to(device), x1.to(device)).double().cpu())
    return torch.cat(out).numpy()


def lpips(generated: Videos, target: Videos, backbone: str = "alex",
          weights_dir: str | Path = WeightsConfig.lpips_dir, device: str = "cpu",
          batch_size: int = 16) -> float | MetricUnavailable:
    per = lpips_per_frame(generated, target, backbone, weights_dir, device, batch_size)
    return per if isinstance(per, MetricUnavailable) else float(per.mean())


# ----------------------------------------------------------------------------------------------- Fréchet distance


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, like np.cov) covariance of (N, D) features."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the matrix root by scipy.linalg.sqrtm as in pytorch-fid."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"Fréchet distance of mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # singular product (fewer samples than dimensions): nudge both diagonals, as pytorch-fid does
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # tiny imaginary parts are round-off; large ones mean the statistics are broken
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: sqrtm has an imaginary component {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------- FID


def _inception_features(net, videos: list[torch.Tensor], device: str, batch_size: int) -> np.ndarray:
    feats = []
    with torch.no_grad():
        for v in videos:
            for s in _chunks(v.shape[0], batch_size):
                feats.append(net(_nchw_rgb(_unit(v[s])).to(device)).double().cpu())
    return torch.cat(feats).numpy()


def fid(generated: Videos, target: Videos, inception_path: str | Path = WeightsConfig.inception_path,
        device: str = "cpu", batch_size: int = 16) -> float | MetricUnavailable:
    """FID over all frames (pytorch-fid's model and formula); each set must hold at least 2 frames."""
    pairs = _pairs(generated, target)
    n = sum(a.shape[0] for a, _ in pairs)
    if n < 2:
        return MetricUnavailable("fid", f"needs at least 2 frames per set for a covariance, got {n}")
    path = resolve(inception_path)
    try:
        net = _cached("fid", path, device, lambda: load_fid_inception(path, device))
    except WeightsNotFound as err:
        return MetricUnavailable("fid", str(err))
    fg = _inception_features(net, [a for a, _ in pairs], device, batch_size)
    ft = _inception_features(net, [b for _, b in pairs], device, batch_size)
    return frechet_distance(*feature_stats(fg), *feature_stats(ft))


# ----------------------------------------------------------------------------------------------- FVD


def _uint8(v: torch.Tensor) -> torch.Tensor:
    """StyleGAN-V feeds the detector uint8 frames; floats are quantised by rounding, RGB forced."""
    v = v if v.dtype == torch.uint8 else (v.to(torch.float64) * 255).round().clamp(0, 255).to(torch.uint8)
    return v.expand(-1, -1, -1, 3) if v.shape[-1] == 1 else v


def _clips(v: torch.Tensor, num_frames: int, mode: str) -> list[torch.Tensor]:
    n = v.shape[0] // num_frames if mode == "all" else 1
    return [v[i * num_frames:(i + 1) * num_frames] for i in range(n)]


def fvd(generated: Videos, target: Videos, i3d_path: str | Path = WeightsConfig.i3d_path,
        num_frames: int = 16, clips: str = "all", device: str = "cpu",
        batch_size: int = 4) -> float | MetricUnavailable:
    """FVD between I3D features of `num_frames`-frame clips (StyleGAN-V: 16 consecutive frames, uint8, the
    detector rescales and resizes to 224 itself). Generated and target clips are cut at the same frames."""
    if clips not in ("all", "first"):
        raise ValueError(f"fvd clips must be 'all' or 'first', not {clips!r}")
    pairs = _pairs(generated, target)
    short = min(a.shape[0] for a, _ in pairs)
    if short < num_frames:
        return MetricUnavailable("fvd", f"needs videos of at least {num_frames} frames, the shortest has {short}")
    g = [c for a, _ in pairs for c in _clips(_uint8(a), num_frames, clips)]
    t = [c for _, b in pairs for c in _clips(_uint8(b), num_frames, clips)]
    if len(g) < 2:
        return MetricUnavailable("fvd", f"needs at least 2 clips per set for a covariance, got {len(g)}")
    path = resolve(i3d_path)
    try:
        net = _cached("fvd", path, device, lambda: load_i3d(path, device))
    except WeightsNotFound as err:
        return MetricUnavailable("fvd", str(err))

    def features(clip_list):
        out = []
        for s in _chunks(len(clip_list), batch_size):
            # clips of different videos may differ in size: batch only same-shaped ones
            group = clip_list[s]
            shapes = {c.shape for c in group}
            batches = [torch.stack(group)] if len(shapes) == 1 else [c[None] for c in group]
            out.extend(net(x) for x in batches)
        return torch.cat(out).numpy()

    return frechet_distance(*feature_stats(features(g)), *feature_stats(features(t)))
