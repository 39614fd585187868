"""The training loop: one stage, over a DeepSpeed engine, resumable to the exact same weights.

Everything random in a step is drawn from a CPU generator seeded by (seed, global step, micro step, rank) and moved
to the model's device (`dimo.models.draws`), and the batch of a step depends only on those numbers, so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have, on any device.

Device and precision live here: each batch moves to `engine.device`; DeepSpeed's `bf16` config trains bf16
weights with fp32 master weights in the optimizer (on GPU by default, `precision` forces it either way), fp32 on
CPU.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dimo.training import checkpoints, data_loader
from dimo.training.batches import PairBatches, move_batch
from dimo.training.data_loader import LoaderSettings

log = logging.getLogger(__name__)


@dataclass
class StageSettings:
    name: str
    steps: int  # optimizer steps in this stage
    global_step_offset: int  # steps of the stages before it (the geometric-loss anneal runs on global steps)
    global_batch: int
    micro_batch: int
    lr: float
    seed: int
    checkpoint_every: int
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end
    deepspeed_config: dict = field(default_factory=dict)
    precision: str = "auto"  # auto: the DeepSpeed json's bf16 on GPU, fp32 on CPU | bf16 | fp32 (any device)
    loader: LoaderSettings = field(default_factory=LoaderSettings)  # workers, prefetch, pinning: not the batches
    checkpoint_remote: str | None = None  # a DVC remote name or fsspec URL: checkpoints copied there
    checkpoint_remote_every: int = 1  # every N-th checkpoint (and the last) is copied


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Under the `deepspeed` launcher the env is set; a plain process becomes rank 0 of 1."""
    if "RANK" not in os.environ:
        with socket.socket() as s:  # a free port for the single-process gloo group
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def deepspeed_config(settings: StageSettings, world_size: int) -> dict:
    """The stage's DeepSpeed config: the ZeRO json from conf/deepspeed plus batch sizes, optimizer and precision."""
    per_step = settings.micro_batch * world_size
    if settings.global_batch % per_step:
        raise ValueError(f"{settings.name}: global_batch {settings.global_batch} is not a multiple of "
                         f"micro_batch x world_size = {per_step}")
    cfg = json.loads(json.dumps(settings.deepspeed_config))  # deep copy
    on_gpu = torch.cuda.is_available()
    cfg.update(train_batch_size=settings.global_batch, train_micro_batch_size_per_gpu=settings.micro_batch,
               gradient_accumulation_steps=settings.global_batch // per_step, steps_per_print=10**9)
    cfg.setdefault("optimizer", {"type": "Adam", "params": {}})
    cfg["optimizer"]["params"]["lr"] = settings.lr
    if not on_gpu:  # torch's Adam instead of compiling DeepSpeed's cpu_adam
        cfg["optimizer"]["params"]["torch_adam"] = True
        cfg.get("zero_optimization", {}).pop("offload_optimizer", None)
        cfg.get("zero_optimization", {}).pop("offload_param", None)
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": bf16_enabled(settings, cfg, on_gpu)}
    return cfg


def bf16_enabled(settings: StageSettings, cfg: dict, on_gpu: bool) -> bool:
    """bf16 weights and activations, fp32 master weights (DeepSpeed's bf16 mode): the json's choice on GPU."""
    if settings.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"{settings.name}: precision must be auto, bf16 or fp32, got {settings.precision!r}")
    if settings.precision == "auto":
        return on_gpu and bool(cfg.get("bf16", {}).get("enabled", False))
    return settings.precision == "bf16"


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def step_inputs(batches: PairBatches, settings: StageSettings, step: int, micro: int, rank: int,
                device: torch.device | str, loader=None) -> tuple[dict, torch.Generator]:
    """What the engine gets for one micro step: the batch on `device` and the step's (CPU) generator. The batch
    is the next one of `loader` (`data_loader.micro_batches`, the loop's path), else built here; the same."""
    if loader is None:
        batch = batches.batch(step, micro, rank)
    else:
        got_step, got_micro, batch = next(loader)
        if (got_step, got_micro) != (step, micro):
            raise RuntimeError(f"the data loader is at step {got_step} micro {got_micro}, the loop at {step} {micro}")
    return move_batch(batch, device), step_generator(settings.seed, step, micro, rank)


def train_stage(model: torch.nn.Module, batches: PairBatches, settings: StageSettings, checkpoint_dir: str | Path,
                on_log: Callable[[int, dict], None] | None = None,
                on_eval: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Train `model` for settings.steps optimizer steps; resume from checkpoint_dir if it holds a checkpoint.

    on_log(global_step, metrics) and on_eval(global_step, model) run on rank 0 only. Returns summary stats.
    """
    import deepspeed

    rank, world = init_distributed()
    ds_cfg = deepspeed_config(settings, world)
    accumulation = ds_cfg["gradient_accumulation_steps"]
    batches.world_size, batches.accumulation = world, accumulation
    torch.manual_seed(settings.seed)  # DeepSpeed/torch internals that use the global RNG
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # tiny CPU models hit denormal floats: several times slower without this
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.trainable_parameters(),
                                           config=ds_cfg)
    checkpoints.use_weights_only_loading(engine)
    resumed = checkpoints.load(engine, checkpoint_dir)
    start = resumed["stage_step"] if resumed else 0
    if resumed:
        log.info("%s: resumed from %s at step %d", settings.name, checkpoints.latest_tag(checkpoint_dir), start)
    elif start == 0 and rank == 0:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)

    if engine.zero_optimization_stage() == 3 and on_eval is not None:
        # A rank-0-only forward cannot gather ZeRO-3 shards from the other ranks: no sample grids under ZeRO-3.
        log.warning("%s: ZeRO-3: sample grids are skipped (they run on rank 0 only)", settings.name)
        on_eval = None
    engine.train()
    bar = tqdm(total=settings.steps, initial=start, desc=settings.name, disable=rank != 0, unit="step")
    samples_per_step = settings.global_batch
    t_start, losses = time.perf_counter(), {}
    loader = data_loader.micro_batches(batches, rank, start, settings.steps, settings.loader, engine.device)
    saved = 0  # checkpoints written by this run (every checkpoint_remote_every-th is uploaded)
    for step in range(start, settings.steps):
        global_step = settings.global_step_offset + step
        totals: dict[str, float] = {}
        for micro in range(accumulation):
            batch, generator = step_inputs(batches, settings, step, micro, rank, engine.device, loader)
            out = engine(batch, step=global_step, generator=generator)
            engine.backward(out["loss"])
            engine.step()
            for key, value in out.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / accumulation
        losses = totals
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{totals['loss']:.4f}")
        if rank == 0 and on_log and (done % settings.log_every == 0 or done == settings.steps):
            elapsed = time.perf_counter() - t_start
            rate = (done - start) * samples_per_step / max(elapsed, 1e-9)
            on_log(global_step, {**totals, "samples_per_s": rate})
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            tag = checkpoints.save(engine, checkpoint_dir, done, {"stage_step": done, "global_step": global_step + 1})
            saved += 1
            if rank == 0 and settings.checkpoint_remote and (saved % settings.checkpoint_remote_every == 0
                                                             or done == settings.steps):
                checkpoints.upload(checkpoint_dir, settings.checkpoint_remote, tag)
        if rank == 0 and on_eval and settings.eval_every and done % settings.eval_every == 0 and done < settings.steps:
            on_eval(global_step, engine.module)
    bar.close()
    if engine.zero_optimization_stage() == 3:
        # ZeRO-3 leaves each rank with a shard of every parameter: gather the full weights into the module
        # (on CPU copies) so that saving it writes the real tensors.
        params = list(model.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            full = [p.detach().clone() for p in params]
        engine.destroy()
        for param, value in zip(params, full):
            param.data = value
    if rank == 0 and on_eval:
        on_eval(settings.global_step_offset + settings.steps - 1, model)
    elapsed = time.perf_counter() - t_start
    return {"start_step": start, "final_losses": losses, "seconds": elapsed,
            "samples_per_s": (settings.steps - start) * samples_per_step / max(elapsed, 1e-9)}
