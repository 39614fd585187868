"""Latent codec: diffusers' `AutoencoderKLWan` (Wan2.1 causal 3D VAE, 4x temporal / 8x spatial, 16 channels) with
Wan's per-channel latent normalisation, (z - latents_mean) / latents_std, as the DiT was trained on it.

Real scale: a local diffusers Wan2.1 folder (`<root>/vae`). Toy scale: `LatentCodec.tiny()`, a random
base_dim=8 VAE with the same interface and compression factors (latents are meaningless but shaped right).
Frozen: no gradients flow into the codec.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from diffusers import AutoencoderKLWan

TINY_VAE_CONFIG = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                       temperal_downsample=[False, True, True])


class LatentCodec(nn.Module):
    def __init__(self, vae: AutoencoderKLWan):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        c = vae.config
        self.register_buffer("mean", torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.latents_std).view(1, -1, 1, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str, subfolder: str | None = "vae", torch_dtype=None) -> LatentCodec:
        if subfolder and not os.path.isdir(os.path.join(path, subfolder)):
            subfolder = None  # path already points at the vae folder
        return cls(AutoencoderKLWan.from_pretrained(path, subfolder=subfolder, torch_dtype=torch_dtype))

    @classmethod
    def tiny(cls, seed: int = 0, **overrides) -> LatentCodec:
        """A random small VAE: `TINY_VAE_CONFIG` with `overrides` (AutoencoderKLWan config keys)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls(AutoencoderKLWan(**{**TINY_VAE_CONFIG, **overrides}))

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    @property
    def temporal_compression(self) -> int:
        return self.vae.config.scale_factor_temporal

    @property
    def spatial_compression(self) -> int:
        return self.vae.config.scale_factor_spatial

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        c, s = self.temporal_compression, self.spatial_compression
        if (num_frames - 1) % c:
            raise ValueError(f"num_frames must be 1 + {c}k, got {num_frames}")
        return self.latent_channels, (num_frames - 1) // c + 1, height // s, width // s

    @torch.no_grad()
    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """video (B, 3, T, H, W) in [-1, 1] -> normalised latents (B, 16, (T-1)/4+1, H/8, W/8).
        Mode of the posterior by default (Wan's pipelines use argmax for conditions)."""
        dist = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return ((z.float() - self.mean) / self.std).to(video.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents -> video (B, 3, T, H, W) clamped to [-1, 1]."""
        z = latents.float() * self.std + self.mean
        return self.vae.decode(z.to(self.vae.dtype)).sample.clamp(-1, 1).to(latents.dtype)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 16, 1, h, w). The VAE is causal: this equals latent frame 0 of any video that
        starts with this image, so with reference = first target frame it is `target_latents[:, :, :1]`."""
        return self.encode(image[:, :, None])

    @torch.no_grad()
    def encode_reference_condition(self, image: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Wan2.1-I2V's condition latents: encode([image, zeros x (T-1)]) -> (B, 16, F, h, w)."""
        B, C, H, W = image.shape
        video = torch.cat([image[:, :, None], image.new_zeros(B, C, num_frames - 1, H, W)], dim=2)
        return self.encode(video)
