"""Kedro nodes shared by pretrain_generator and train_stage1..3: train one stage, register its weights.

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
import torch

from dimo import video_io
from dimo.models import DimoModel, configs
from dimo.models.schedules import AnnealSchedule
from dimo.training import registry
from dimo.training.batches import PairBatches
from dimo.training.loop import StageSettings, train_stage
from dimo.training.samples import sample_grid
from dimo.training.stages import PAPER_STAGES, global_step_offset

log = logging.getLogger(__name__)

def build_model(stage: str, params: dict, manifest: dict) -> DimoModel:
    """The stage's starting weights: a fresh toy model, a registered alias, or a stock Wan2.1 folder."""
    spec = params["model"]
    init = params["stages"][stage]["init"]
    if init == "scratch":
        return build_fresh(spec, manifest)
    if init.startswith("wan:"):
        cfg = configs.get(spec["config"], variant=spec["variant"], **spec.get("overrides", {}))
        return DimoModel.from_stock_pretrained(cfg, init.removeprefix("wan:"))
    model = registry.load_model(init)
    got = (model.config.name, model.config.variant)
    if got[0] == spec["config"] and got[1] != spec["variant"] and spec.get("transfer_from_other_variant", False):
        return transfer_weights(model, build_fresh(spec, manifest))  # ablations start from the same base
    if got != (spec["config"], spec["variant"]):
        raise ValueError(f"{stage}: {init} holds a {got[0]!r} model (variant {got[1]!r}) but training.model asks "
                         f"for {spec['config']!r} (variant {spec['variant']!r}); run the earlier stages with the "
                         "same training.model or point init at a matching model")
    return model


def build_fresh(spec: dict, manifest: dict) -> DimoModel:
    cfg = configs.get(spec["config"], variant=spec["variant"], **{"text_in_dim": manifest["text_dim"],
                                                                    **spec.get("overrides", {})})
    return DimoModel(cfg)


def transfer_weights(source: DimoModel, target: DimoModel) -> DimoModel:
    """Copy every weight whose name and shape agree, e.g. the base generator into an ablation variant whose
    motion pathway differs (channel concatenation, SMPL control, no hand encoder)."""
    src, dst = source.state_dict(), target.state_dict()
    shared = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    for k, v in src.items():  # a wider input layer (channel concatenation appends motion channels): copy the
        w = dst.get(k)         # stock input channels, the appended ones keep their zero init
        if w is not None and k not in shared and w.ndim == v.ndim > 1 and w.shape[0] == v.shape[0] \
                and w.shape[2:] == v.shape[2:] and w.shape[1] > v.shape[1]:
            shared[k] = torch.cat([v, w[:, v.shape[1]:]], 1)
    target.load_state_dict(shared, strict=False)
    fresh = sorted({k.split(".")[0] + "." + k.split(".")[1] for k in set(dst) - set(shared)})
    log.info("%s: %d of %d tensors from the %s model; freshly initialised: %s", target.config.variant, len(shared),
             len(dst), source.config.variant, ", ".join(fresh) or "none")
    return target


def configure_for_stage(model: DimoModel, stage: dict, params: dict) -> None:
    """Training knobs that belong to the stage, not to the saved model."""
    model.config.p_drop_text = params["p_drop_text"]
    model.config.p_drop_motion = stage.get("p_drop_motion", params["p_drop_motion"])  # 1.0 = no motion at all
    geo = params["geometric_loss"] if stage.get("geometric_loss", True) else {**params["geometric_loss"], "start": 0.0}
    model.geo_schedule = AnnealSchedule(**geo)
    if model.config.gradient_checkpointing:  # real-scale configs: activations of 48K-token clips need it
        model.enable_gradient_checkpointing()


def fingerprint(stage: str, params: dict, pairs: pd.DataFrame) -> str:
    """What a resumable checkpoint must agree with: the stage's parameters (with the effective geometric-loss
    schedule and learning rate, which the sweep's best parameters may change) and its data."""
    payload = json.dumps({"stage": params["stages"][stage], "model": params["model"], "batch": params["batch"],
                          "seed": params["seed"], "geometric_loss": params["geometric_loss"],
                          "lr": params["stages"][stage].get("lr", params["lr"]),
                          "pairs": pd.util.hash_pandas_object(pairs).sum().item()},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


def effective_params(stage: str, params: dict, sweep_best) -> dict:
    """`params`, or with `geometric_loss_from_sweep: true` the sweep's best schedule applied (stage1..3 only:
    pretraining has no geometric loss). `sweep_best` is the `annealing_best_params` dataset: a dict, or a falsy
    `dimo.datasets.Absent` naming the file when it does not exist (an error: the flag asks for it)."""
    if not params.get("geometric_loss_from_sweep", False) or stage not in PAPER_STAGES:
        return params
    if sweep_best is None:  # a caller that does not load the file (e.g. the ablation runs): its own schedule
        log.warning("%s: training.geometric_loss_from_sweep is true but this caller passes no sweep parameters: "
                    "training.geometric_loss is used as configured", stage)
        return params
    if not sweep_best:
        where = getattr(sweep_best, "path", None) or "the annealing_best_params file (conf catalog)"
        raise FileNotFoundError(f"{stage}: training.geometric_loss_from_sweep is true but {where} does not exist: "
                                "run `kedro run --pipelines=annealing_sweep` first (same --env), or set "
                                "training.geometric_loss_from_sweep: false")
    out = apply_schedule(params, sweep_best)
    log.info("%s: geometric loss %s%s from the annealing sweep (study %s, trial %s)", stage, out["geometric_loss"],
             f", lr {out['lr']}" if sweep_best.get("lr") is not None else "", sweep_best.get("study"),
             sweep_best.get("trial"))
    return out


def run_stage(stage: str, pairs: pd.DataFrame, cache: dict, codec, manifest: dict, deepspeed_config: dict,
              params: dict, previous: dict | None = None, sweep_best=None) -> tuple[DimoModel, dict]:
    """Train one stage end to end; returns the trained model and its summary (also logged to MLflow).
    `sweep_best`: the annealing sweep's best parameters, used when `params["geometric_loss_from_sweep"]`."""
    params = effective_params(stage, params, sweep_best)
    stage_params = params["stages"][stage]
    train_pairs = pairs[(pairs["stage"] == stage) & (pairs["split"] == "train")]
    if train_pairs.empty:
        raise ValueError(f"{stage}: training_pairs has no train pairs for this stage (run preprocess first)")
    model = build_model(stage, params, manifest)
    configure_for_stage(model, stage_params, params)

    batch_cfg = params["batch"]
    settings = StageSettings(
        name=stage, steps=stage_params["steps"], global_step_offset=global_step_offset(stage, params["stages"]),
        global_batch=batch_cfg["global"], micro_batch=batch_cfg["micro"], lr=stage_params.get("lr", params["lr"]),
        seed=params["seed"], checkpoint_every=params["checkpoint_every"], log_every=params["log_every"],
        eval_every=params["eval_every"], deepspeed_config=deepspeed_config)
    batches = PairBatches(train_pairs, cache, stage_params["mix"], batch_cfg["micro"], params["seed"])
    ckpt_dir = Path(params["checkpoint_dir"]) / stage
    check_resumable(ckpt_dir, fingerprint(stage, params, train_pairs))

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
    summary = {"stage": stage, "steps": settings.steps, "resumed_at": stats["start_step"],
               "final_losses": stats["final_losses"], "samples_per_s": stats["samples_per_s"],
               "train_pairs": {k: int(v) for k, v in train_pairs["kind"].value_counts().items()},
               "init": stage_params["init"], "previous": previous, "lr": settings.lr,
               "geometric_loss": model.geo_schedule.to_dict(),
               "geometric_loss_from_sweep": ({"study": sweep_best.get("study"), "trial": sweep_best.get("trial")}
                                             if params.get("geometric_loss_from_sweep") and sweep_best else None)}
    return model, summary


def check_resumable(ckpt_dir: Path, expected: str) -> None:
    marker = ckpt_dir / "fingerprint"
    if marker.is_file() and marker.read_text().strip() != expected:
        raise ValueError(f"{ckpt_dir} holds a checkpoint of a run with other parameters or data "
                         f"(fingerprint {marker.read_text().strip()} != {expected}); delete that folder to start "
                         "this stage afresh, or restore the parameters to resume it")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(expected)


def pick_grid_pair(pairs: pd.DataFrame, stage: str) -> tuple[str, str]:
    """A fixed pair for sample grids: a val cross-view pair if any, else the first pair of the stage."""
    rows = pairs[pairs["stage"] == stage].sort_values(["split", "kind"], key=lambda s: s.map(
        {"val": 0, "train": 1, "cross_view": 0, "reconstruction": 1}))
    row = rows.iloc[0]
    return row["driving_clip_id"], row["target_clip_id"]


def register_stage(stage: str, model: DimoModel, codec, manifest: dict, summary: dict, params: dict) -> dict:
    """Register the stage's weights in the MLflow registry with its aliases."""
    aliases = list(params["stages"][stage]["aliases"])
    tags = {"stage": stage, "config": model.config.name, "variant": model.config.variant, "steps": summary["steps"]}
    return registry.register(model, codec, manifest["text_encoder"], params["registered_model_name"], aliases, tags)


def stage_pipeline(stage: str, previous: str | None):
    """Nodes of one training stage: train (from the previous stage's registered weights), then register."""
    from functools import partial, update_wrapper

    from kedro.pipeline import Node, Pipeline

    def named(func, name):  # Kedro shows the function name in logs and `kedro viz`
        return update_wrapper(partial(func, stage), func)

    inputs = {"pairs": "training_pairs", "cache": "latent_cache", "codec": "latent_codec",
              "manifest": "preprocess_manifest", "deepspeed_config": "deepspeed_config", "params": "params:training"}
    if previous:
        inputs["previous"] = f"{previous}_registration"
    if stage in PAPER_STAGES:  # loaded always (Absent when missing), used only with geometric_loss_from_sweep
        inputs["sweep_best"] = "annealing_best_params"
    return Pipeline([
        Node(named(run_stage, stage), inputs, [f"{stage}_model", f"{stage}_summary"], name=f"train_{stage}"),
        Node(named(register_stage, stage), [f"{stage}_model", "latent_codec", "preprocess_manifest",
                                            f"{stage}_summary", "params:training"],
             f"{stage}_registration", name=f"register_{stage}"),
    ])
