"""Training batches from the latent cache: one (driving clip, target clip) pair per sample.

The reference image is the first frame of the target (paper Sec. 3.3): with Wan's causal VAE its latent is the
target's first latent frame. The prompt is the target's caption (it describes the target's camera); the motion
encoder sees the driving clip's frames, hand keypoints and pose labels.

Which pairs micro-batch (step, micro, rank) holds depends only on those numbers and the seed (`sample_ids`), and
clips are read from the cache when a batch is built; at most `keep_clips` recently used ones are kept (an LRU: a
toy dataset fits, a real one does not), so memory does not grow with the dataset.
`dimo.training.data_loader` runs `PairBatches.batch` in DataLoader workers, ahead of the loop.

Size buckets (micro-batch > 1, clips of several sizes): a micro-batch only stacks examples of one bucket (every
stacked field the same shape). The bucket of the micro-batch whose first global sample is n0 is drawn from
rng(seed, n0, 2) with the bucket's weight w_B = sum over kinds of mix_k |pairs of kind k in B| / |pairs of kind k|
(the chance that one sample lands in B without buckets); sample n then takes a pair of its kind in that bucket,
uniformly, from rng(seed, n, 1). So everything stays a function of (seed, sample indices), and for the mix it means:
each bucket gets the share of samples it would get without buckets; every sample keeps its kind (exact ratios)
when each bucket holds every kind of the mix, else a bucket that lacks one fills those samples with its other kind
(the buckets are logged when the stage starts); within a kind, pairs are uniform when the buckets share the kind
ratios, else a pair's chance scales with its bucket's weight over its kind's count there. With one bucket (or
micro-batch 1) the samples are exactly `mixtures.sample_indices`, the order before buckets existed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch

from dimo.training import mixtures

log = logging.getLogger(__name__)

TARGET_FIELDS = ("latents", "text_embeddings", "text_mask")  # what an example takes from the target clip
DRIVING_FIELDS = ("driving_frames", "hand_keypoints", "wrist_keypoints", "pose_targets", "pose_valid")
SAMPLE_STREAM, BUCKET_STREAM = 1, 2  # rng(seed, n, 1): sample n in its bucket; rng(seed, n0, 2): the bucket


def load_clip(entry: Callable[[], dict] | dict) -> dict:
    """A cache entry's tensors: entries are lazy loaders (the catalog's PartitionedDataset) or dicts."""
    return entry() if callable(entry) else entry


def clip_shapes(entry: Callable[[], dict] | dict) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a cache entry; a safetensors partition is read from its header only."""
    if isinstance(entry, Mapping):
        return {key: tuple(value.shape) for key, value in entry.items()}
    dataset = getattr(entry, "__self__", None)  # PartitionedDataset hands out bound `load` methods
    if hasattr(dataset, "shapes"):
        return dataset.shapes()
    return clip_shapes(entry())


def size_buckets(pairs: pd.DataFrame, cache: Mapping) -> np.ndarray:
    """The bucket of every pair row: pairs whose examples stack (every field the same shape) share a number."""
    codes: dict[tuple, int] = {}
    per_clip: dict[str, tuple[int, int]] = {}  # clip id -> (target shape code, driving shape code)

    def code(clip_id: str) -> tuple[int, int]:
        if clip_id not in per_clip:
            shapes = clip_shapes(cache[clip_id])
            per_clip[clip_id] = tuple(codes.setdefault(tuple(shapes[f] for f in fields), len(codes))
                                      for fields in (TARGET_FIELDS, DRIVING_FIELDS))
        return per_clip[clip_id]

    keys = [(code(t)[0], code(d)[1]) for d, t in zip(pairs["driving_clip_id"], pairs["target_clip_id"])]
    numbers = {key: i for i, key in enumerate(sorted(set(keys)))}
    return np.array([numbers[key] for key in keys], dtype=np.int64)


class PairBatches:
    """Deterministic batches for one stage: batch(step, micro, rank) depends only on those numbers and the seed."""

    def __init__(self, pairs: pd.DataFrame, cache: Mapping[str, Callable[[], dict] | dict], mix: dict,
                 micro_batch: int, seed: int, world_size: int = 1, accumulation: int = 1, keep_clips: int = 0):
        self.pairs, self.mix, self.seed = pairs.reset_index(drop=True), mix, seed
        self.micro_batch, self.world_size, self.accumulation = micro_batch, world_size, accumulation
        self._cache, self.keep_clips = cache, keep_clips
        self._kept: OrderedDict[str, dict] = OrderedDict()  # the LRU, per process (each worker has its own)
        self.bucket_of = size_buckets(self.pairs, cache) if micro_batch > 1 else None
        if self.bucket_of is not None and len(set(self.bucket_of)) == 1:
            self.bucket_of = None  # one size: nothing to group
        self._rows: dict[tuple[str, int], np.ndarray] = {}
        if self.bucket_of is not None:
            kinds = self.pairs["kind"].to_numpy()
            self._rows = {(k, int(b)): np.flatnonzero((kinds == k) & (self.bucket_of == b))
                          for k in mixtures.KINDS for b in range(self.bucket_of.max() + 1)}
            total = sum(self.mix.values())
            weights = [sum(p / total * len(self._rows[(k, b)]) / max((kinds == k).sum(), 1)
                           for k, p in self.mix.items()) for b in range(self.bucket_of.max() + 1)]
            self._bucket_edges = np.cumsum(weights) / sum(weights)
            self._log_buckets(weights)

    def _log_buckets(self, weights: list[float]) -> None:
        kinds = [k for k, p in self.mix.items() if p > 0]
        counts = {b: {k: len(self._rows[(k, b)]) for k in kinds} for b in range(len(weights))}
        log.info("size buckets (weight, pairs of each kind): %s",
                 {b: (round(w, 4), counts[b]) for b, w in enumerate(weights)})
        lacking = sorted(b for b, c in counts.items() if not all(c.values()))
        if lacking:
            log.warning("size buckets %s lack pairs of a kind of the mix %s: their micro-batches fill those samples "
                        "with the kind they have", lacking, self.mix)

    def clip(self, clip_id: str) -> dict:
        if clip_id in self._kept:
            self._kept.move_to_end(clip_id)
            return self._kept[clip_id]
        tensors = load_clip(self._cache[clip_id])
        if self.keep_clips > 0:
            self._kept[clip_id] = tensors
            if len(self._kept) > self.keep_clips:
                self._kept.popitem(last=False)
        return tensors

    def sample_ids(self, step: int, micro: int, rank: int) -> list[int]:
        per_step = self.micro_batch * self.accumulation * self.world_size
        first = step * per_step + (micro * self.world_size + rank) * self.micro_batch
        if self.bucket_of is None:
            return mixtures.sample_indices(self.pairs, self.mix, first, self.micro_batch, self.seed)
        return self._in_one_bucket(first)

    def _in_one_bucket(self, first: int) -> list[int]:
        """Samples first .. first+micro_batch-1 from one size bucket (module docstring)."""
        u = np.random.default_rng([self.seed, first, BUCKET_STREAM]).random()
        bucket = min(int(np.searchsorted(self._bucket_edges, u, side="right")), len(self._bucket_edges) - 1)
        out = []
        for n in range(first, first + self.micro_batch):
            rows = self._rows[(mixtures.kind_of_sample(n, self.mix), bucket)]
            if not len(rows):  # the bucket has no pair of this kind: one of the kind it has
                rows = np.concatenate([self._rows[(k, bucket)] for k in mixtures.KINDS])
            out.append(int(rows[np.random.default_rng([self.seed, n, SAMPLE_STREAM]).integers(len(rows))]))
        return out

    def batch(self, step: int, micro: int = 0, rank: int = 0) -> dict:
        rows = self.pairs.iloc[self.sample_ids(step, micro, rank)]
        loaded: dict[str, dict] = {}  # a clip read once per micro-batch, dropped with it
        for clip_id in (*rows["driving_clip_id"], *rows["target_clip_id"]):
            if clip_id not in loaded:
                loaded[clip_id] = self.clip(clip_id)
        return collate([example(loaded[r.driving_clip_id], loaded[r.target_clip_id]) for r in rows.itertuples()])

    def example(self, driving_id: str, target_id: str) -> dict:
        target = self.clip(target_id)
        return example(target if driving_id == target_id else self.clip(driving_id), target)


def example(driving: dict, target: dict) -> dict:
    """One training sample from a driving clip and a target clip (cache entries' tensors)."""
    # Wan2.1-I2V: the CLIP states of the reference image (the target's first frame), cached by preprocess.
    image = {"image_embeddings": target["image_embeddings"]} if "image_embeddings" in target else {}
    return {
        **image,
        "target_latents": target["latents"],
        "reference_latents": target["latents"][:, :1],
        "text_embeddings": target["text_embeddings"],
        "text_mask": target["text_mask"].bool(),
        "driving_frames": driving["driving_frames"].float() / 127.5 - 1.0,  # uint8 (T,3,H,W) -> [-1, 1]
        "hand_keypoints": driving["hand_keypoints"],
        "wrist_keypoints": driving["wrist_keypoints"],
        "pose_targets": driving["pose_targets"],
        "pose_valid": driving["pose_valid"],
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
        if pin and value.device.type == "cpu" and not value.is_pinned():  # the DataLoader may have pinned it
            value = value.pin_memory()
        return value.to(device, non_blocking=on_cuda)

    return {key: move(value) for key, value in batch.items()}


def collate(examples: list[dict]) -> dict:
    mixed = {key: sorted({tuple(e[key].shape) for e in examples}) for key in examples[0]}
    mixed = {key: shapes for key, shapes in mixed.items() if len(shapes) > 1}
    if mixed:  # PairBatches' size buckets never build such a micro-batch
        raise ValueError(f"a micro-batch mixes clips of different sizes {mixed}: draw it through PairBatches "
                         "(size buckets) or stack clips of one size")
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}
