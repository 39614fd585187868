"""The toy-scale codec: a small `AutoencoderKLWan` fitted to video clips on the CPU (no pretrained video VAE can
be downloaded here), and its reconstruction quality with the project's metrics.

`fit_toy_codec(videos, cfg, seed)` -> a frozen `LatentCodec` with its own per-channel latent mean / std (Wan's
latent normalisation, measured on the fitted VAE). `codec_quality(codec, videos)` -> {"psnr_db", "ssim"} over
full frames of full clips. The settings that were measured are in docs/models.md, "Toy codec".
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dimo.evaluation import metrics

from .patch_codec import PatchPCAVAE
from .vae import LatentCodec


def _snippets(videos: Sequence[torch.Tensor], cfg: Mapping, rng: np.random.Generator) -> torch.Tensor:
    """A batch of random (1+4k)-frame, crop x crop snippets: the causal VAE sees its first-frame and later-frame
    cases, and the convolutional VAE fits faster on crops, then runs on full frames."""
    n, crop, batch = cfg["toy_clip_frames"], cfg["toy_crop"], []
    for i in rng.integers(len(videos), size=cfg["toy_batch"]):
        _, _, t_len, height, width = videos[i].shape
        t0, y0, x0 = (int(rng.integers(s - c + 1)) for s, c in ((t_len, n), (height, crop), (width, crop)))
        batch.append(videos[i][:, :, t0:t0 + n, y0:y0 + crop, x0:x0 + crop])
    return torch.cat(batch)


@contextmanager
def _threads(n: int | None):
    """torch's CPU threads set for a block and restored after (later nodes of the run keep theirs). On the shared
    2-core machine 2 threads measured 50x slower per step than 1: each of the many small ops waits for both."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0: a high peak rate converges fast in a short fit."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _latent_stats(codec_vae, videos: Sequence[torch.Tensor], n: int) -> tuple[list[float], list[float]]:
    with torch.no_grad():
        z = torch.cat([codec_vae.encode(v).latent_dist.mode().flatten(2) for v in videos[: max(1, n)]], 2)
    return z.mean((0, 2)).tolist(), z.std((0, 2)).clamp_min(1e-3).tolist()


def fit_toy_codec(videos: Sequence[torch.Tensor], cfg: Mapping, seed: int) -> LatentCodec:
    """Fit a small AutoencoderKLWan to `videos` (each (1, 3, T, H, W) in [-1, 1]) and freeze it.

    cfg: toy_steps, toy_lr, toy_batch, toy_clip_frames, toy_crop, toy_kl, stats_clips, and optionally toy_vae
    (AutoencoderKLWan config overrides of `vae.TINY_VAE_CONFIG`), toy_warmup (steps), toy_sample (train on
    posterior samples, default; false: on its mode), toy_threads (CPU threads for the fit, restored after).
    Deterministic from `seed` (snippet draws, initial weights and posterior samples)."""
    with _threads(cfg.get("toy_threads")):
        if cfg.get("toy_kind", "autoencoder") == "pca":
            return _fit_pca(videos, cfg, seed)
        return _fit(videos, cfg, seed)


def _fit_pca(videos: Sequence[torch.Tensor], cfg: Mapping, seed: int) -> LatentCodec:
    """The linear patch codec (`patch_codec.PatchPCAVAE`): principal components of the train clips' blocks."""
    vae = PatchPCAVAE().fit(list(videos), max_blocks=int(cfg.get("toy_max_blocks", 60000)), seed=seed)
    mean, std = _latent_stats(vae, videos, cfg["stats_clips"])
    if cfg.get("toy_latent_scale", "channel") == "global":
        # one scale for all components: the basis is orthonormal, so the latent MSE is then the pixel MSE (up to a
        # constant) instead of weighing each low-variance high-frequency component like the picture's mean
        std = [float(np.sqrt(np.mean(np.square(std))))] * len(std)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return LatentCodec(vae)


def _fit(videos: Sequence[torch.Tensor], cfg: Mapping, seed: int) -> LatentCodec:
    torch.set_flush_denormal(True)  # CPU: denormal floats in small conv nets cost several times the time
    vae = LatentCodec.tiny(seed=seed, **dict(cfg.get("toy_vae") or {})).vae.requires_grad_(True).train()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    steps, warmup = int(cfg["toy_steps"]), int(cfg.get("toy_warmup", 0))
    # Posterior samples early in a short fit are mostly noise (log-variance starts near 0): the mode learns faster.
    sample = bool(cfg.get("toy_sample", True))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["toy_lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup))
    for _ in tqdm(range(steps), desc="fit toy codec"):
        x = _snippets(videos, cfg, rng)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen) if sample else posterior.mode()
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + cfg["toy_kl"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    vae.eval().requires_grad_(False)
    # Wan normalises latents per channel with its VAE's statistics; a VAE fitted here needs its own.
    mean, std = _latent_stats(vae, videos, cfg["stats_clips"])
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return LatentCodec(vae)


def _uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3), as videos are stored."""
    return ((video[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def codec_quality(codec: LatentCodec, videos: Sequence[torch.Tensor], threads: int | None = None) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of encode -> decode over every frame of `videos` (each (1, 3, T, H, W) in
    [-1, 1], full frames), both on uint8 frames as the benchmark scores them."""
    device = next(codec.parameters()).device
    targets, recons = [], []
    with torch.no_grad(), _threads(threads):
        for v in videos:
            targets.append(_uint8_frames(v))
            recons.append(_uint8_frames(codec.decode(codec.encode(v.to(device))).cpu()))
    ssim = metrics.ssim(recons, targets)
    return {"psnr_db": metrics.psnr(recons, targets),
            "ssim": float("nan") if isinstance(ssim, metrics.MetricUnavailable) else ssim}


def timed_fit(videos: Sequence[torch.Tensor], cfg: Mapping, seed: int) -> tuple[LatentCodec, dict[str, float]]:
    """`fit_toy_codec` with its wall-clock and process CPU seconds (CPU / wall ~ the cores it really had)."""
    wall, cpu = time.perf_counter(), time.process_time()
    codec = fit_toy_codec(videos, cfg, seed)
    return codec, {"fit_wall_s": time.perf_counter() - wall, "fit_cpu_s": time.process_time() - cpu}
