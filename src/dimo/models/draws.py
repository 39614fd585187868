"""Random draws that give the same numbers on every device.

Training draws everything random from a generator seeded by (seed, step, micro, rank), a CPU `torch.Generator`:
its numbers do not depend on where the model runs, so a run resumed on other hardware continues exactly. A CUDA
kernel refuses a CPU generator, so the draw happens on the generator's device and the result moves to the tensor's
device. On CPU this is the very same draw as `torch.rand(..., generator=g, device="cpu")`: same numbers, same order.
With no generator the draw uses the target device's global RNG, as torch does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _draw(sample, size: int | Sequence[int], generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    size = (size,) if isinstance(size, int) else tuple(size)
    if generator is None:
        return sample(size, device=device, dtype=dtype)
    out = sample(size, generator=generator, device=generator.device, dtype=dtype)
    return out if device is None else out.to(device, non_blocking=True)


def rand(size: int | Sequence[int], generator: torch.Generator | None = None, device=None,
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """`torch.rand(size, generator=generator)` drawn on the generator's device, returned on `device`."""
    return _draw(torch.rand, size, generator, device, dtype)


def randn(size: int | Sequence[int], generator: torch.Generator | None = None, device=None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """`torch.randn(size, generator=generator)` drawn on the generator's device, returned on `device`."""
    return _draw(torch.randn, size, generator, device, dtype)
