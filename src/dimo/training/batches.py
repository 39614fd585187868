"""Training batches from the latent cache: one (driving clip, target clip) pair per sample.

The reference image is the first frame of the target (paper Sec. 3.3): with Wan's causal VAE its latent is the
target's first latent frame. The prompt is the target's caption (it describes the target's camera); the motion
encoder sees the driving clip's frames, hand keypoints and pose labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import torch

from dimo.training import mixtures


class PairBatches:
    """Deterministic batches for one stage: batch(step, micro, rank) depends only on those numbers and the seed."""

    def __init__(self, pairs: pd.DataFrame, cache: Mapping[str, Callable[[], dict] | dict], mix: dict,
                 micro_batch: int, seed: int, world_size: int = 1, accumulation: int = 1):
        self.pairs, self.mix, self.seed = pairs.reset_index(drop=True), mix, seed
        self.micro_batch, self.world_size, self.accumulation = micro_batch, world_size, accumulation
        self._cache = cache
        self._loaded: dict[str, dict] = {}

    def clip(self, clip_id: str) -> dict:
        if clip_id not in self._loaded:  # cache entries are lazy loaders (PartitionedDataset) or dicts
            entry = self._cache[clip_id]
            self._loaded[clip_id] = entry() if callable(entry) else entry
        return self._loaded[clip_id]

    def sample_ids(self, step: int, micro: int, rank: int) -> list[int]:
        per_step = self.micro_batch * self.accumulation * self.world_size
        first = step * per_step + (micro * self.world_size + rank) * self.micro_batch
        return mixtures.sample_indices(self.pairs, self.mix, first, self.micro_batch, self.seed)

    def batch(self, step: int, micro: int = 0, rank: int = 0) -> dict:
        rows = self.pairs.iloc[self.sample_ids(step, micro, rank)]
        return collate([self.example(r.driving_clip_id, r.target_clip_id) for r in rows.itertuples()])

    def example(self, driving_id: str, target_id: str) -> dict:
        drv, tgt = self.clip(driving_id), self.clip(target_id)
        # Wan2.1-I2V: the CLIP states of the reference image (the target's first frame), cached by preprocess.
        image = {"image_embeddings": tgt["image_embeddings"]} if "image_embeddings" in tgt else {}
        return {**image,
            "target_latents": tgt["latents"],
            "reference_latents": tgt["latents"][:, :1],
            "text_embeddings": tgt["text_embeddings"],
            "text_mask": tgt["text_mask"].bool(),
            "driving_frames": drv["driving_frames"].float() / 127.5 - 1.0,  # uint8 (T,3,H,W) -> [-1, 1]
            "hand_keypoints": drv["hand_keypoints"],
            "wrist_keypoints": drv["wrist_keypoints"],
            "pose_targets": drv["pose_targets"],
            "pose_valid": drv["pose_valid"],
        }


def move_batch(batch: dict, device: torch.device | str) -> dict:
    """The batch on the engine's device (DeepSpeed hands inputs to the module as they are). CUDA copies go through
    pinned memory and do not block; the model casts to its own dtype where inputs meet its weights, so targets and
    keypoints stay fp32. On CPU this returns the same tensors."""
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    pin = on_cuda and torch.cuda.is_available()  # pinning needs a real CUDA runtime (not the fake-device tests)

    def move(value):
        if not isinstance(value, torch.Tensor) or value.device == device:
            return value
        if pin and value.device.type == "cpu":
            value = value.pin_memory()
        return value.to(device, non_blocking=on_cuda)

    return {key: move(value) for key, value in batch.items()}


def collate(examples: list[dict]) -> dict:
    shapes = {tuple(e["target_latents"].shape) for e in examples}
    if len(shapes) > 1:
        raise ValueError(f"a micro-batch mixes clips of different sizes {sorted(shapes)}: use batch.micro: 1 "
                         "(gradient accumulation makes up the global batch) or clips of one size")
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}
