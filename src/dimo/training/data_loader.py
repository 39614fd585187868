"""The stage's micro-batches through a torch DataLoader: worker processes build them ahead of the loop, pinned
when the engine is on CUDA, with memory bounded by what is in flight (workers x prefetch_factor micro-batches).

The DataLoader only runs `PairBatches.batch`: item m of `MicroBatches` is micro step m % accumulation of optimizer
step m // accumulation on this rank, the sampler walks m from the resume step on, and the DataLoader hands items
back in sampler order whatever the number of workers. So the loop gets exactly the batches it would build itself,
and a resumed run, which starts the sampler at its resume step, continues the same sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from dimo.training.batches import PairBatches


@dataclass
class LoaderSettings:
    """`training.loader` in conf/<env>/parameters_training.yml."""

    num_workers: int = 0  # 0: batches are built in the training process, when the loop asks
    prefetch_factor: int = 2  # micro-batches each worker builds ahead (workers > 0)
    pin_memory: bool | str = "auto"  # auto: when the engine is on a CUDA device
    persistent_workers: bool = False  # keep workers between iterations (a stage iterates once)
    keep_clips: int = 0  # clips each process keeps (LRU, `PairBatches.keep_clips`): 0 = read every time
    cache_shards: str | None = None  # a shard folder / manifest URL (dimo.cache_shards): read clips from it instead

    def cache(self, latent_cache):
        """The stage's cache: the catalog's per-clip files, or (`cache_shards`) clips read by byte range from
        WebDataset shards on any fsspec URL, never copied whole."""
        if not self.cache_shards:
            return latent_cache
        from dimo.cache_shards import ShardCache

        return ShardCache(self.cache_shards)

    @classmethod
    def from_params(cls, params: dict | None) -> LoaderSettings:
        settings = cls(**(params or {}))
        if settings.pin_memory not in (True, False, "auto"):
            raise ValueError(f"training.loader.pin_memory must be true, false or auto, got {settings.pin_memory!r}")
        return settings


class MicroBatches(Dataset):
    """Micro-batch m = step * accumulation + micro of one rank, as (step, micro, batch)."""

    def __init__(self, batches: PairBatches, rank: int):
        self.batches, self.rank = batches, rank

    def __getitem__(self, m: int) -> tuple[int, int, dict]:
        step, micro = divmod(m, self.batches.accumulation)
        return step, micro, self.batches.batch(step, micro, self.rank)


def _as_built(item):  # the micro-batch is collated already (module level: workers may pickle it)
    return item


def micro_batches(batches: PairBatches, rank: int, start_step: int, steps: int, settings: LoaderSettings,
                  device: torch.device | str = "cpu") -> Iterator[tuple[int, int, dict]]:
    """(step, micro, batch) for steps start_step .. steps-1 of this rank, in order (`batches.accumulation` micro
    steps each); `batch` is `batches.batch(step, micro, rank)`, pinned when `settings.pin_memory` says so."""
    accumulation = batches.accumulation
    pin = settings.pin_memory
    if pin == "auto":
        pin = torch.device(device).type == "cuda" and torch.cuda.is_available()
    workers = settings.num_workers
    loader = DataLoader(MicroBatches(batches, rank), batch_size=None, collate_fn=_as_built,
                        sampler=range(start_step * accumulation, steps * accumulation), num_workers=workers,
                        pin_memory=pin, prefetch_factor=settings.prefetch_factor if workers else None,
                        persistent_workers=settings.persistent_workers and workers > 0,
                        generator=torch.Generator().manual_seed(0))  # not the global RNG: the model's draws use it
    return iter(loader)
