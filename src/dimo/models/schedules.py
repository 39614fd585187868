"""Loss-weight schedules. The paper anneals the geometric-supervision weight linearly from 0.1 to 0 over the
first 12K steps (Supp. E); `shape` makes the ablation of that choice a config switch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SHAPES = ("linear", "cosine", "step")


@dataclass(frozen=True)
class AnnealSchedule:
    start: float = 0.1
    end: float = 0.0
    end_step: int = 12000
    shape: str = "linear"  # "step": `start` until end_step, then `end`

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.end_step < 0:
            raise ValueError("end_step must be >= 0")

    def weight(self, step: int) -> float:
        if step >= self.end_step:
            return float(self.end)
        frac = max(step, 0) / self.end_step
        if self.shape == "linear":
            return self.start + (self.end - self.start) * frac
        if self.shape == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * frac))
        return float(self.start)

    __call__ = weight

    def to_dict(self) -> dict:
        return asdict(self)
