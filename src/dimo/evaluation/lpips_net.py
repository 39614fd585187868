"""LPIPS v0.1 (Zhang et al. 2018) with AlexNet or VGG16 features, in plain torch (torchvision breaks this torch).

The weights are the ImageNet backbones plus the learned per-channel linear heads, converted once by
`scripts/convert_lpips_weights.py` into `<dir>/{alex,vgg}.safetensors` under this module's own key names.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .common import WeightsNotFound, resolve

# Layer plans: ("conv", in, out, kernel, stride, padding) is followed by a ReLU; "tap" takes the ReLU output
# as one LPIPS feature level; ("pool", kernel, stride) is an unpadded max-pool. These are torchvision's
# alexnet/vgg16 `features` up to the taps LPIPS uses (relu1..relu5 / relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_ALEX = [("conv", 3, 64, 11, 4, 2), ("tap",), ("pool", 3, 2),
         ("conv", 64, 192, 5, 1, 2), ("tap",), ("pool", 3, 2),
         ("conv", 192, 384, 3, 1, 1), ("tap",),
         ("conv", 384, 256, 3, 1, 1), ("tap",),
         ("conv", 256, 256, 3, 1, 1), ("tap",)]


def _vgg16_plan() -> list[tuple]:
    plan, cin = [], 3
    for i, (width, depth) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        if i:
            plan.append(("pool", 2, 2))
        for _ in range(depth):
            plan.append(("conv", cin, width, 3, 1, 1))
            cin = width
        plan.append(("tap",))
    return plan


PLANS = {"alex": _ALEX, "vgg": _vgg16_plan()}
# LPIPS' input scaling layer: images in [-1, 1] are mapped to the statistics the ImageNet backbones expect.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPSNet(nn.Module):
    """d(x0, x1) = sum_l mean_hw || w_l * (n(f_l(x0)) - n(f_l(x1))) ||^2, n = unit-normalise over channels."""

    def __init__(self, backbone: str = "alex"):
        super().__init__()
        if backbone not in PLANS:
            raise ValueError(f"unknown LPIPS backbone {backbone!r}; expected one of {sorted(PLANS)}")
        self.backbone = backbone
        self.plan = PLANS[backbone]
        self.convs = nn.ModuleList(nn.Conv2d(step[1], step[2], step[3], stride=step[4], padding=step[5])
                                   for step in self.plan if step[0] == "conv")
        tap_channels, last = [], 3
        for kind, *rest in self.plan:
            if kind == "conv":
                last = rest[1]
            elif kind == "tap":
                tap_channels.append(last)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in tap_channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps, convs = [], iter(self.convs)
        for kind, *rest in self.plan:
            if kind == "conv":
                x = F.relu(next(convs)(x))
            elif kind == "pool":
                x = F.max_pool2d(x, rest[0], rest[1])
            else:
                taps.append(x)
        return taps

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """x0, x1: (N, 3, H, W) in [-1, 1] -> (N,) distances."""
        feats = self.features(torch.cat([x0, x1]))  # one pass over both halves: half the Python overhead
        total = x0.new_zeros(x0.shape[0])
        for f, head in zip(feats, self.heads):
            f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            f0, f1 = f.chunk(2)
            total = total + head((f0 - f1).pow(2)).mean(dim=(1, 2, 3))
        return total


def weights_path(weights_dir: str | Path, backbone: str) -> Path:
    return resolve(weights_dir) / f"{backbone}.safetensors"


def load_lpips(backbone: str, weights_dir: str | Path, device: str | torch.device = "cpu") -> LPIPSNet:
    """Build the network and load `<weights_dir>/<backbone>.safetensors` (strict: every tensor must match)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    net = LPIPSNet(backbone)
    path = weights_path(weights_dir, backbone)
    if not path.is_file():
        raise WeightsNotFound(f"lpips_{backbone}", path,
                              "convert them with `python scripts/convert_lpips_weights.py`, see docs/evaluation.md")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("backbone", backbone) != backbone:
        raise ValueError(f"{path} holds LPIPS weights for backbone {meta['backbone']!r}, not {backbone!r}")
    state = load_file(str(path))
    want = net.state_dict()
    bad = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in want.items()
           if k in state and state[k].shape != v.shape}
    if bad or set(state) != set(want):
        raise ValueError(f"{path} does not fit LPIPSNet({backbone!r}): missing {sorted(set(want) - set(state))}, "
                         f"unexpected {sorted(set(state) - set(want))}, shape mismatches (file, model) {bad}")
    net.load_state_dict(state)
    return net.eval().requires_grad_(False).to(device)
