"""The I3D video feature extractor for FVD, as StyleGAN-V uses it: the TorchScript `i3d_torchscript.pt`.

That file (distributed with StyleGAN-V; Kinetics-400 I3D matching the TF-Hub model of the original FVD) is a
TorchScript module called as `detector(videos, rescale=True, resize=True, return_features=True)` on uint8 clips
(N, 3, T, H, W): it rescales [0, 255] to [-1, 1] and resizes frames to 224x224 itself, and returns the 400-d
pre-softmax logits. Only this TorchScript format is supported, since that is the file everyone distributes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .common import WeightsNotFound, resolve

I3D_WEIGHTS_NAME = "i3d_torchscript.pt"
FEATURE_DIM = 400
# StyleGAN-V's FVD call: raw features before the softmax, preprocessing inside the detector.
DETECTOR_KWARGS = dict(rescale=True, resize=True, return_features=True)


class I3DFeatures(torch.nn.Module):
    """Wraps the TorchScript detector: uint8 clips (N, T, H, W, 3) -> (N, 400) float64 features."""

    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.detector = detector

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"I3D expects uint8 clips (N, T, H, W, 3), got {clips.dtype} {tuple(clips.shape)}")
        device = next(iter(self.detector.parameters()), torch.empty(0)).device
        x = clips.permute(0, 4, 1, 2, 3).contiguous().to(device)  # -> (N, C, T, H, W), StyleGAN-V's layout
        out = self.detector(x, **DETECTOR_KWARGS)
        if out.ndim != 2 or out.shape != (clips.shape[0], FEATURE_DIM):
            raise ValueError(f"I3D detector returned {tuple(out.shape)}, expected ({clips.shape[0]}, {FEATURE_DIM})")
        return out.double().cpu()


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> I3DFeatures:
    path = resolve(path)
    if not path.is_file():
        raise WeightsNotFound("fvd", path, f"place StyleGAN-V's {I3D_WEIGHTS_NAME} there, see docs/evaluation.md")
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript, but the published detector exists only in that format
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
            detector = torch.jit.load(str(path), map_location=device)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a TorchScript module (expected StyleGAN-V's {I3D_WEIGHTS_NAME}): "
                         f"{err}") from err
    return I3DFeatures(detector.eval())
