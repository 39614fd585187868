"""Train one stage, register its weights: the functions the training pipelines' nodes call
(`dimo.pipelines.training`), and the ablation, the annealing sweep and the DeepSpeed launcher through
`stages.run_chain`. Where a stage's model comes from is `model_init`; which stages exist is `stages`.

At toy scale `pretrain_generator` trains a tiny Wan generator from scratch as image-to-video with camera
prompts and no motion (no pretrained video DiT can be downloaded here) and registers it as alias `base`.
At real scale it is skipped and stage 1 starts from a local Wan2.1 folder (`init: wan:<folder>`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from dimo import video_io
from dimo.models import DimoModel
from dimo.training import checkpoints, handover, registry, stages
from dimo.training.batches import PairBatches
from dimo.training.data_loader import LoaderSettings
from dimo.training.loop import StageSettings, train_stage
from dimo.training.model_init import build_model, configure_for_stage
from dimo.training.samples import sample_grid
from dimo.training.stages import NOT_LOADED, PAPER_STAGES

log = logging.getLogger(__name__)


def fingerprint(stage: str, params: dict, pairs: pd.DataFrame, start: dict | None = None) -> str:
    """A short id of what a resumable checkpoint must agree with (`checkpoints.resume_record`): the stage's
    parameters, its data, the starting model (default: `init` as written) and the global step offset."""
    start = start or {"init": params["stages"][stage]["init"]}
    record = checkpoints.resume_record(stage, params, pairs, start)
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


SWEPT_SCHEDULE_KEYS = ("start", "end_step", "shape")  # what the annealing sweep searches (plus lr, optionally)


def apply_schedule(params: dict, best: dict) -> dict:
    """Training parameters with a swept schedule: `best["geometric_loss"]` (start, end_step, shape) replaces those
    keys of `geometric_loss`; `best["lr"]`, when the sweep searched it, replaces `lr` for stage1..3 (a stage's
    own lr included, since the sweep trained every stage at that rate). Used by the sweep's trials and by
    training with `geometric_loss_from_sweep`, so both mean the same thing."""
    out = copy.deepcopy(params)
    geo = best.get("geometric_loss") or {}
    out["geometric_loss"] = {**out["geometric_loss"], **{k: geo[k] for k in SWEPT_SCHEDULE_KEYS if k in geo}}
    if best.get("lr") is not None:
        out["lr"] = float(best["lr"])
        for stage in PAPER_STAGES:
            out["stages"][stage].pop("lr", None)
    return out


def effective_params(stage: str, params: dict, sweep_best=NOT_LOADED) -> dict:
    """`params`, or with `geometric_loss_from_sweep: true` the sweep's best schedule applied (stage1..3 only:
    pretraining has no geometric loss). `sweep_best` is what the `annealing_best_params` dataset loaded: a dict,
    or None when the file does not exist (an error: the flag asks for it). A caller that does not load the
    dataset (the ablation) leaves it at `stages.NOT_LOADED`."""
    if not params.get("geometric_loss_from_sweep", False) or stage not in PAPER_STAGES:
        return params
    if sweep_best is NOT_LOADED:  # e.g. the ablation runs: their own schedule
        log.warning("%s: training.geometric_loss_from_sweep is true but this caller loads no sweep parameters: "
                    "training.geometric_loss is used as configured", stage)
        return params
    if not sweep_best:  # the file does not exist
        raise FileNotFoundError(f"{stage}: training.geometric_loss_from_sweep is true but the annealing_best_params "
                                "file (conf/base/catalog_annealing_sweep.yml) does not exist: "
                                "run `kedro run --pipelines=annealing_sweep` first (same --env), or set "
                                "training.geometric_loss_from_sweep: false")
    out = apply_schedule(params, sweep_best)
    log.info("%s: geometric loss %s%s from the annealing sweep (study %s, trial %s)", stage, out["geometric_loss"],
             f", lr {out['lr']}" if sweep_best.get("lr") is not None else "", sweep_best.get("study"),
             sweep_best.get("trial"))
    return out


def run_stage(stage: str, pairs: pd.DataFrame, cache: dict, codec, manifest: dict, deepspeed_config: dict,
              params: dict, previous: dict | None = None, sweep_best=NOT_LOADED) -> tuple[DimoModel, dict]:
    """Train one stage end to end; returns the trained model and its summary (also logged to MLflow).
    `previous`: the predecessor's registration (recorded in the summary). `sweep_best`: the annealing sweep's
    best parameters, used when `params["geometric_loss_from_sweep"]` (see `effective_params`). A stage switched off
    in this environment (`training.stages.<stage>: null`) trains nothing: `stages.DisabledStage`."""
    if not stages.enabled(stage, params["stages"]):
        log.info("%s is switched off in this environment (training.stages.%s: null): nothing to train", stage, stage)
        return stages.DisabledStage(stage), {**stages.DisabledStage(stage).record(), "previous": previous}
    params = effective_params(stage, params, sweep_best)
    stage_params = params["stages"][stage]
    train_pairs = pairs[(pairs["stage"] == stage) & (pairs["split"] == "train")]
    if train_pairs.empty:
        raise ValueError(f"{stage}: training_pairs has no train pairs for this stage (run preprocess first)")
    # The starting model pinned (registry version, or a weights hash) before anything loads: a checkpoint of a
    # run that started elsewhere (an earlier stage trained again since) is refused here, not resumed.
    start = handover.resolve_init(stage_params["init"], params)
    record = checkpoints.resume_record(stage, params, train_pairs, checkpoints.starting_model(start))
    ckpt_dir = Path(params["checkpoint_dir"]) / stage
    if fetched := checkpoints.fetch_remote(ckpt_dir, params.get("checkpoint_remote"), record):  # a lost machine's
        log.info("%s: no local checkpoint; fetched %s from %s", stage, fetched, params["checkpoint_remote"])
    checkpoints.check_resumable(ckpt_dir, record, rank=int(os.environ.get("RANK", "0")))
    model = build_model(stage, params, manifest)
    configure_for_stage(model, stage_params, params)

    batch_cfg = params["batch"]
    settings = StageSettings(
        name=stage, steps=stage_params["steps"], global_step_offset=record["global_step_offset"],
        global_batch=batch_cfg["global"], micro_batch=batch_cfg["micro"], lr=stage_params.get("lr", params["lr"]),
        seed=params["seed"], checkpoint_every=params["checkpoint_every"], log_every=params["log_every"],
        eval_every=params["eval_every"], deepspeed_config=deepspeed_config,
        precision=params.get("precision", "auto"), loader=LoaderSettings.from_params(params.get("loader")),
        checkpoint_remote=params.get("checkpoint_remote"),
        checkpoint_remote_every=int(params.get("checkpoint_remote_every", 1)))
    batches = PairBatches(train_pairs, settings.loader.cache(cache), stage_params["mix"], batch_cfg["micro"],
                          params["seed"],
                          keep_clips=settings.loader.keep_clips)

    grid_pair = pick_grid_pair(pairs, stage)
    active = mlflow.active_run() is not None

    def on_log(step: int, metrics: dict) -> None:
        if active:
            mlflow.log_metrics({f"{stage}.{k}": float(v) for k, v in metrics.items()}, step=step)

    def on_eval(step: int, module) -> None:
        if active and params["sample_steps"] > 0:
            grid = sample_grid(module, codec, batches.example(*grid_pair), params["sample_steps"], params["seed"])
            with tempfile.TemporaryDirectory() as tmp:
                video_io.write_video(f"{tmp}/{stage}-step{step:06d}.mp4", grid, 8)
                mlflow.log_artifact(f"{tmp}/{stage}-step{step:06d}.mp4", artifact_path=f"samples/{stage}")
            mlflow.log_image(grid[len(grid) // 2], artifact_file=f"samples/{stage}/step{step:06d}.png")

    stats = train_stage(model, batches, settings, ckpt_dir, on_log=on_log, on_eval=on_eval)
    if not params.get("keep_checkpoints", False) and int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # final weights are saved and registered next
        checkpoints.remove_remote(ckpt_dir, params.get("checkpoint_remote"))
    summary = {"stage": stage, "steps": settings.steps, "resumed_at": stats["start_step"],
               "final_losses": stats["final_losses"], "samples_per_s": stats["samples_per_s"],
               "train_pairs": {k: int(v) for k, v in train_pairs["kind"].value_counts().items()},
               "init": stage_params["init"], "previous": previous, "lr": settings.lr,
               "geometric_loss": model.geo_schedule.to_dict(),
               "geometric_loss_from_sweep": ({"study": sweep_best.get("study"), "trial": sweep_best.get("trial")}
                                             if params.get("geometric_loss_from_sweep") and sweep_best else None)}
    return model, summary


def pick_grid_pair(pairs: pd.DataFrame, stage: str) -> tuple[str, str]:
    """A fixed pair for sample grids: a val cross-view pair if any, else the first pair of the stage."""
    rows = pairs[pairs["stage"] == stage].sort_values(["split", "kind"], key=lambda s: s.map(
        {"val": 0, "train": 1, "cross_view": 0, "reconstruction": 1}))
    row = rows.iloc[0]
    return row["driving_clip_id"], row["target_clip_id"]


def register_stage(stage: str, model: DimoModel, codec, manifest: dict, summary: dict, params: dict) -> dict:
    """Register the stage's weights in the MLflow registry with its aliases (a switched-off stage: its record)."""
    if isinstance(model, stages.DisabledStage):
        return model.record()
    aliases = list(params["stages"][stage]["aliases"])
    tags = {"stage": stage, "config": model.config.name, "variant": model.config.variant, "steps": summary["steps"]}
    folder = Path(params.get("stage_models") or "") / stage
    if params.get("stage_models") and folder.is_dir():  # the DVC output this version is (training/handover.py)
        tags[handover.DVC_MD5_TAG] = handover.dvc_md5(folder)
    return registry.register(model, codec, manifest["text_encoder"], params["registered_model_name"], aliases, tags)
