"""Resume checkpoints: DeepSpeed's own folder, written so a kill at any moment leaves a loadable state,
and read back with `torch.load(weights_only=True)`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

LATEST = "latest"


def _deepspeed_safe_globals() -> list:
    # The only non-tensor types a ZeRO optimizer checkpoint holds (found with
    # torch.serialization.get_unsafe_globals_in_checkpoint); everything else is tensors and plain data.
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, but loading without arbitrary unpickling."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def use_weights_only_loading(engine) -> None:
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(config_params=None)


def latest_tag(checkpoint_dir: str | Path) -> str | None:
    """The tag of the last complete checkpoint, or None."""
    marker = Path(checkpoint_dir) / LATEST
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    return tag if (Path(checkpoint_dir) / tag).is_dir() else None


def save(engine, checkpoint_dir: str | Path, step: int, client_state: dict, keep: int = 2) -> str:
    """Write checkpoint `step-<n>`; only then point `latest` at it (atomic rename), then prune old ones.

    A kill while writing leaves `latest` on the previous complete checkpoint.
    """
    checkpoint_dir = Path(checkpoint_dir)
    tag = f"step-{step:08d}"
    if (checkpoint_dir / tag).exists():  # a partial write from a killed run
        shutil.rmtree(checkpoint_dir / tag)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False)
    if engine.global_rank == 0:
        fd, tmp = tempfile.mkstemp(dir=checkpoint_dir, prefix=".latest")
        with os.fdopen(fd, "w") as f:
            f.write(tag)
        os.replace(tmp, checkpoint_dir / LATEST)
        tags = sorted(p.name for p in checkpoint_dir.glob("step-*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(checkpoint_dir / old, ignore_errors=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return tag


def load(engine, checkpoint_dir: str | Path) -> dict | None:
    """Restore the engine (weights, optimizer, scheduler) from the latest checkpoint; its client state or None."""
    tag = latest_tag(checkpoint_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"{checkpoint_dir}/{tag}: DeepSpeed could not load this checkpoint")
    return client_state
