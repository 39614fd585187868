"""MTVCrafter's 4DMoT (its Sec. 3.1 and Appendix A): a VQ-VAE over sequences of root-relative 3D joints.

Input (B, T, J, 3): J joints per frame (our pseudo-labels' 23 fitted keypoints, mid-hip removed), z-normalised
with the dataset's mean and std, which the model keeps as buffers. The encoder is 2D convolutions over
(frames, joints) in residual blocks, the second convolution of each dilated along time, with average-pool
downsampling of the frame axis (`frame_down`, (2, 2, 1): T/4 latent frames); each (latent frame, joint) is a
token of `code_dim`. The quantizer is a nearest-neighbour codebook updated by exponential moving averages, with
codes unused for `reset_every` steps reset to encoder outputs of the current batch. The decoder mirrors the
encoder with nearest upsampling. Loss: L1 reconstruction + `commitment` * ||E - sg[C]||^2.
Dropped from the paper: its sliding window over long sequences (our clips are one window each).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dilation: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(min(8, c_in), c_in), nn.GroupNorm(min(8, c_out), c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=(dilation, 1), dilation=(dilation, 1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class EMAQuantizer(nn.Module):
    """Codebook (S, D) learnt by EMA of the vectors assigned to each code (no gradient reaches it)."""

    def __init__(self, size: int, dim: int, decay: float, reset_every: int):
        super().__init__()
        self.decay, self.reset_every = decay, reset_every
        self.register_buffer("codebook", torch.randn(size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("unused_steps", torch.zeros(size, dtype=torch.long))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> nearest code index (N,)."""
        return torch.cdist(z.float(), self.codebook).argmin(-1)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, len(self.codebook)).type_as(z)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.T @ z, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + len(self.codebook) * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / count[:, None])
        used = torch.zeros_like(self.unused_steps, dtype=torch.bool)
        used[idx] = True
        self.unused_steps.add_(1).masked_fill_(used, 0)
        dead = torch.nonzero(self.unused_steps >= self.reset_every).flatten()
        if len(dead):  # dead-code reset: restart each at a vector of this batch
            pick = torch.randint(len(z), (len(dead),), device=z.device)
            self.codebook[dead] = z[pick]
            self.ema_sum[dead], self.ema_count[dead], self.unused_steps[dead] = z[pick], 1.0, 0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (N, D) -> straight-through quantised z, code indices, commitment loss."""
        idx = self.codes(z)
        if self.training:
            self._update(z.detach().float(), idx)
        q = self.codebook[idx].to(z.dtype)
        return z + (q - z).detach(), idx, F.mse_loss(z, q.detach())


class MotionTokenizer(ModelMixin, ConfigMixin):
    """(B, T, J, 3) joints in metres -> (B, T/4 * J) motion token indices, and back."""

    @register_to_config
    def __init__(self, num_joints: int = 23, channels: tuple[int, ...] = (32, 128, 512),
                 frame_down: tuple[int, ...] = (2, 2, 1), code_dim: int = 3072, codebook_size: int = 8192,
                 ema_decay: float = 0.99, reset_every: int = 20, commitment: float = 0.25, dilation: int = 3):
        super().__init__()
        self.register_buffer("joint_mean", torch.zeros(num_joints, 3))
        self.register_buffer("joint_std", torch.ones(num_joints, 3))
        enc, c = [nn.Conv2d(3, channels[0], 3, padding=1)], channels[0]
        for width, rate in zip(channels, frame_down, strict=True):
            enc += [ResBlock(c, width, dilation), nn.AvgPool2d((rate, 1)) if rate > 1 else nn.Identity()]
            c = width
        self.encoder = nn.Sequential(*enc, nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, code_dim, 1))
        self.quantizer = EMAQuantizer(codebook_size, code_dim, ema_decay, reset_every)
        dec, c = [nn.Conv2d(code_dim, channels[-1], 3, padding=1)], channels[-1]
        for width, rate in zip(reversed(channels), reversed(frame_down), strict=True):
            dec += [nn.Upsample(scale_factor=(rate, 1)) if rate > 1 else nn.Identity(), ResBlock(c, width, dilation)]
            c = width
        self.decoder = nn.Sequential(*dec, nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))

    @property
    def frames_per_token(self) -> int:
        return int(torch.tensor(self.config.frame_down).prod())

    def set_statistics(self, joints: torch.Tensor) -> None:
        """The dataset's per-joint mean and std (joints (N, T, J, 3)): the z-normalisation of every input."""
        flat = joints.reshape(-1, *joints.shape[-2:]).float()
        self.joint_mean.copy_(flat.mean(0))
        self.joint_std.copy_(flat.std(0).clamp_min(1e-3))

    def _latents(self, joints: torch.Tensor) -> torch.Tensor:
        """(B, T, J, 3) -> (B, D, T/4, J) before quantisation."""
        x = (joints.to(self.dtype) - self.joint_mean) / self.joint_std
        return self.encoder(x.permute(0, 3, 1, 2))

    def encode(self, joints: torch.Tensor) -> torch.Tensor:
        """(B, T, J, 3) -> token indices (B, T/4, J)."""
        z = self._latents(joints)
        b, d, t, j = z.shape
        return self.quantizer.codes(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, t, j)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """token indices (B, T/4, J) -> joints (B, T, J, 3) in metres."""
        q = self.quantizer.codebook[codes].permute(0, 3, 1, 2).to(self.dtype)
        return self._unnormalise(self.decoder(q))

    def _unnormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1) * self.joint_std + self.joint_mean

    def forward(self, joints: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction, codes and the two loss terms (in normalised units) of one batch (B, T, J, 3)."""
        z = self._latents(joints)
        b, d, t, j = z.shape
        q, codes, commit = self.quantizer(z.permute(0, 2, 3, 1).reshape(-1, d))
        out = self.decoder(q.view(b, t, j, d).permute(0, 3, 1, 2))
        target = (joints.to(self.dtype) - self.joint_mean) / self.joint_std
        recon = F.l1_loss(out.permute(0, 2, 3, 1), target)
        return {"joints": self._unnormalise(out), "codes": codes.view(b, t, j), "reconstruction": recon,
                "commitment": commit, "loss": recon + self.config.commitment * commit}


def mpjpe_mm(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error in mm of (..., J, 3) joints in metres, per leading index (e.g. per window)."""
    return torch.linalg.vector_norm(pred - target, dim=-1).flatten(1).mean(1) * 1000
