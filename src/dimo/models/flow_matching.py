"""Rectified flow (Wan's training objective) and an Euler sampler with text + motion classifier-free guidance.

x_t = (1 - t) x0 + t eps, t in [0, 1], velocity target v = eps - x0; the DiT sees timestep 1000 t.
Training t: uniform (or logit-normal) u, then Wan's shift t = s u / (1 + (s - 1) u) (s > 1 favours noisy t).
Sampling integrates dx/dt = v from t = 1 (noise) to t = 0 on the same shifted grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import draws


@dataclass
class FlowMatchingConfig:
    shift: float = 5.0  # Wan2.1 uses 5.0 at 480p for training-time and sampling shift
    timestep_sampling: str = "uniform"  # or "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    num_train_timesteps: int = 1000
    sample_shift: float | None = None  # None: same as `shift`

    def to_dict(self) -> dict:
        return asdict(self)


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


class FlowMatching:
    def __init__(self, config: FlowMatchingConfig | dict | None = None):
        if isinstance(config, dict):
            config = FlowMatchingConfig(**config)
        self.config = config or FlowMatchingConfig()

    def sample_t(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.config
        if c.timestep_sampling == "logit_normal":
            u = torch.sigmoid(c.logit_mean + c.logit_std * draws.randn(batch_size, generator, device))
        elif c.timestep_sampling == "uniform":
            u = draws.rand(batch_size, generator, device)
        else:
            raise ValueError(f"unknown timestep_sampling {c.timestep_sampling!r}")
        return shift_timesteps(u, c.shift)

    @staticmethod
    def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = self._bcast(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.config.num_train_timesteps

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred.float(), target.float())

    def sigmas(self, num_steps: int, device=None) -> torch.Tensor:
        shift = self.config.sample_shift if self.config.sample_shift is not None else self.config.shift
        return shift_timesteps(torch.linspace(1.0, 0.0, num_steps + 1, device=device), shift)

    @torch.no_grad()
    def sample(self, velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
               num_steps: int) -> torch.Tensor:
        """Euler from t=1 to t=0. velocity_fn(x_t, model_timestep (B,)) -> v."""
        x = noise
        sig = self.sigmas(num_steps, noise.device)
        for i in range(num_steps):
            t = sig[i].expand(x.shape[0])
            v = velocity_fn(x, self.model_timestep(t))
            x = x + (sig[i + 1] - sig[i]).to(x.dtype) * v.to(x.dtype)
        return x

