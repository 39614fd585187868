"""The toy-scale codec: a linear patch autoencoder with Wan2.1's VAE's shapes, fitted in closed form (PCA).

No pretrained video VAE can be downloaded here, and a small `AutoencoderKLWan` fitted on 2 CPU cores for minutes
stays at 12-16 dB on held-out clips (docs/models.md, "Toy codec"): the person is a blur. The principal components
of the clips' own space-time blocks keep far more at the same compression: Wan's causal layout, latent frame 0
from video frame 0 alone (8 x 8 x 1 x 3 values -> 16) and every later latent frame from the next 4 frames
(8 x 8 x 4 x 3 -> 16), i.e. 4x temporal / 8x spatial, 16 channels, 48x fewer numbers. Measured on the embedded
default's held-out test clips: 28.9 dB. The fit is one SVD per block kind (seconds). Encoding is deterministic
(the posterior is a point), and the latents are normalised per channel like Wan's (`LatentCodec`).

It quacks like diffusers' `AutoencoderKLWan` where `LatentCodec` touches it: `encode(x).latent_dist.mode()`,
`decode(z).sample`, `config.z_dim / scale_factor_temporal / scale_factor_spatial / latents_mean / latents_std`,
`save_pretrained` / `from_pretrained` (safetensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange


@dataclass
class _PointPosterior:
    z: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.z

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.z


@dataclass
class _Encoded:
    latent_dist: _PointPosterior


@dataclass
class _Decoded:
    sample: torch.Tensor


class PatchPCAVAE(ModelMixin, ConfigMixin):
    """x (B, 3, 1 + 4k, H, W) in [-1, 1] -> z (B, z_dim, 1 + k, H / s, W / s) and back, linear per block."""

    @register_to_config
    def __init__(self, z_dim: int = 16, scale_factor_spatial: int = 8, scale_factor_temporal: int = 4,
                 latents_mean: list[float] | None = None, latents_std: list[float] | None = None):
        super().__init__()
        s, t = scale_factor_spatial, scale_factor_temporal
        self.register_to_config(latents_mean=latents_mean or [0.0] * z_dim, latents_std=latents_std or [1.0] * z_dim)
        # rows: principal directions; first frame (its own block kind) and later frames
        self.first_basis = torch.nn.Parameter(torch.zeros(z_dim, 3 * s * s), requires_grad=False)
        self.first_mean = torch.nn.Parameter(torch.zeros(3 * s * s), requires_grad=False)
        self.basis = torch.nn.Parameter(torch.zeros(z_dim, 3 * t * s * s), requires_grad=False)
        self.mean = torch.nn.Parameter(torch.zeros(3 * t * s * s), requires_grad=False)

    def _blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 1 + 4k, H, W) -> first-frame blocks (B, h, w, 3ss) and later blocks (B, k, h, w, 3tss)."""
        s, t = self.config.scale_factor_spatial, self.config.scale_factor_temporal
        if (x.shape[2] - 1) % t or x.shape[3] % s or x.shape[4] % s:
            raise ValueError(f"video {tuple(x.shape)}: frames must be 1 + {t}k and sides multiples of {s}")
        first = rearrange(x[:, :, 0], "b c (h p) (w q) -> b h w (c p q)", p=s, q=s)
        rest = rearrange(x[:, :, 1:], "b c (k t) (h p) (w q) -> b k h w (c t p q)", t=t, p=s, q=s)
        return first, rest

    @torch.no_grad()
    def fit(self, videos: list[torch.Tensor], max_blocks: int = 60000, seed: int = 0) -> PatchPCAVAE:
        """Principal components of the videos' blocks (a seeded subsample of at most `max_blocks` per kind)."""
        firsts, rests = zip(*(self._blocks(v.float()) for v in videos), strict=True)
        gen = torch.Generator().manual_seed(seed)
        for blocks, basis, mean in ((firsts, self.first_basis, self.first_mean), (rests, self.basis, self.mean)):
            X = torch.cat([b.reshape(-1, b.shape[-1]) for b in blocks]).double()
            if len(X) > max_blocks:
                X = X[torch.randperm(len(X), generator=gen)[:max_blocks]]
            mu = X.mean(0)
            _, _, vt = torch.linalg.svd(X - mu, full_matrices=False)
            vt = vt[: self.config.z_dim]
            vt = vt * torch.where(vt.sum(1, keepdim=True) < 0, -1.0, 1.0)  # a fixed sign per component
            basis.copy_(vt.float())
            mean.copy_(mu.float())
        return self

    def encode(self, x: torch.Tensor) -> _Encoded:
        first, rest = self._blocks(x.to(self.basis.dtype))
        z0 = (first - self.first_mean) @ self.first_basis.T  # (B, h, w, z)
        zr = (rest - self.mean) @ self.basis.T  # (B, k, h, w, z)
        z = torch.cat([z0[:, None], zr], 1)
        return _Encoded(_PointPosterior(rearrange(z, "b f h w z -> b z f h w")))

    def decode(self, z: torch.Tensor) -> _Decoded:
        s, t = self.config.scale_factor_spatial, self.config.scale_factor_temporal
        z = rearrange(z.to(self.basis.dtype), "b z f h w -> b f h w z")
        first = z[:, 0] @ self.first_basis + self.first_mean
        rest = z[:, 1:] @ self.basis + self.mean
        x0 = rearrange(first, "b h w (c p q) -> b c 1 (h p) (w q)", c=3, p=s, q=s)
        xr = rearrange(rest, "b k h w (c t p q) -> b c (k t) (h p) (w q)", c=3, t=t, p=s, q=s)
        return _Decoded(torch.cat([x0, xr], 2))
