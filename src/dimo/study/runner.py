"""Run the study's units in order, each resumable: train what is not saved yet (`training.stages.run_chain`, the
same code as the training pipelines; mid-stage resume through its checkpoints), measure it once, keep both on
disk. A unit that is done trains and measures nothing; a unit that fails leaves the earlier units' results intact.

MLflow: each unit is a nested run `<unit>` under the caller's run (kedro-mlflow's, as the annealing sweep's trials
are), holding its training curves (`<stage>.<loss>` by global step), its measurements and `unit.json`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from dimo.models import DimoModel
from dimo.study.units import (
    BASE_UNIT,
    METRICS_FILE,
    Unit,
    done_stages,
    read_json,
    unit_dir,
    unit_params,
    units,
    write_json,
)
from dimo.training.batches import PairBatches
from dimo.training.stages import run_chain

log = logging.getLogger(__name__)


def train_unit(unit: Unit, study: dict, training: dict, data: dict) -> tuple[DimoModel, list[dict]]:
    """The unit's final model and its stage summaries, training only the stages not saved yet. `data`: the
    `run_chain` inputs (pairs, cache, codec, manifest, deepspeed_config)."""
    folder = unit_dir(study, unit)
    params = unit_params(unit, training, study)
    finished = done_stages(study, unit)
    todo = [key for key in unit.schedule if key not in finished]
    if todo:
        log.info("study: %s trains %s%s", unit.name, todo, f" (done: {finished})" if finished else "")
    t0 = time.perf_counter()
    for done in run_chain(todo, data["pairs"], data["cache"], data["codec"], data["manifest"],
                          data["deepspeed_config"], params, register=False, save_dir=folder):
        summary = {**done.summary, "seconds": time.perf_counter() - t0}
        write_json(folder / f"{done.stage}.json", summary)  # after the weights: marks the stage done
        t0 = time.perf_counter()
    summaries = [read_json(folder / f"{key}.json") for key in unit.schedule]
    return DimoModel.from_pretrained(str(folder / unit.schedule[-1])), summaries


def _log_unit(unit: Unit, summaries: list[dict], metrics: dict, seconds: float) -> None:
    mlflow.set_tags({"study.unit": unit.name, "study.arm": unit.arm, "study.variant": unit.variant,
                     "study.seed": unit.seed})
    mlflow.log_params({"schedule": ",".join(unit.schedule), **{f"steps.{k}": v for k, v in unit.steps.items()}})
    flat = {k: float(v) for k, v in metrics.get("summary", {}).items() if isinstance(v, (int, float))}
    for stage, curve in metrics.get("curve", {}).items():  # measurements after each stage: the gap's curve
        for key, value in curve.items():
            if isinstance(value, (int, float)):
                mlflow.log_metric(f"curve.{key}", float(value), step=int(stage))
    for s in summaries:
        flat |= {f"final.{s['stage']}.{k}": float(v) for k, v in s["final_losses"].items()}
    mlflow.log_metrics(flat | {"unit_seconds": seconds})
    mlflow.log_dict({"unit": unit.__dict__, "summaries": summaries, "metrics": metrics}, "unit.json")


def run_units(study: dict, training: dict, data: dict, measure: Callable[[Unit, DimoModel, list[dict]], dict],
              on_done: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """Every unit of `study` (base first), resumable; -> {unit name: its metrics.json content}. `measure(unit,
    model, summaries)` scores a trained unit (not called for the base, nor for a unit already measured);
    `on_done()` runs after each unit."""
    results, parent = {}, mlflow.active_run() is not None
    for unit in units(study, training):
        folder = unit_dir(study, unit)
        t0 = time.perf_counter()
        with mlflow.start_run(run_name=unit.name, nested=True) if parent else contextlib.nullcontext():
            model, summaries = train_unit(unit, study, training, data)
            metrics = read_json(folder / METRICS_FILE)
            if metrics is None:
                metrics = {"unit": unit.name, "arm": unit.arm, "seed": unit.seed, "schedule": list(unit.schedule)}
                if unit.name != BASE_UNIT:
                    metrics |= measure(unit, model, summaries)
                metrics["train_seconds"] = sum(float(s.get("seconds", 0.0)) for s in summaries)
                write_json(folder / METRICS_FILE, metrics)
            if parent:
                _log_unit(unit, summaries, metrics, time.perf_counter() - t0)
        results[unit.name] = metrics
        on_done()
        log.info("study: %s done (%.0f s this run)", unit.name, time.perf_counter() - t0)
    return results


def pairs_for(clips: pd.DataFrame, training: dict) -> pd.DataFrame:
    """The study's training pairs (its own stage mixes, e.g. stage 1 reconstructs every kind of clip)."""
    from dimo.training import mixtures

    tables = []
    for name, stage in training["stages"].items():
        train = clips[clips["split"] == "train"]
        tables.append(mixtures.build_pairs(train, {**stage, "name": name}).assign(stage=name, split="train"))
    return pd.concat(tables, ignore_index=True)


def _probe(study: dict, clips: pd.DataFrame, frames: dict, gt: dict):
    """The pose probe of this study, fitted once (train-split renders) and kept in `<output_dir>/probe`."""
    from dimo.evaluation.pose_probe import PoseProbe
    from dimo.study import measure

    folder = Path(study["output_dir"]) / "probe"
    if (folder / "config.json").is_file():
        return PoseProbe.from_pretrained(str(folder)).eval()
    probe = measure.fit_probe(clips, frames, gt, study["measure"]["probe"], seed=0)
    probe.save_pretrained(str(folder))
    return probe


def run_study(pairs: pd.DataFrame, cache: dict, codec, manifest: dict, deepspeed_config: dict, clips: pd.DataFrame,
              frames: dict, gt: dict, training: dict, study: dict) -> dict:
    """Train and measure every unit (resumable, see `run_units`); -> {"units": {unit: metrics}, "references":
    codec and probe accuracy on the held-out clips, "wall_seconds": this study's run time summed over its runs}."""
    clock = _WallClock(Path(study["output_dir"]) / "wall.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(study.get("torch_threads") or threads))  # tiny ops: threads cost more than they give
    try:
        return _run_study(pairs, cache, codec, manifest, deepspeed_config, clips, frames, gt, training, study, clock)
    finally:
        torch.set_num_threads(threads)


def _run_study(pairs, cache, codec, manifest, deepspeed_config, clips, frames, gt, training, study, clock) -> dict:
    from dimo.study import measure

    out_dir = Path(study["output_dir"])
    params = study["measure"]
    held = measure.held_out_pairs(clips, params["splits"], params.get("max_pairs"))
    if held.empty:
        raise ValueError(f"study.measure.splits {list(params['splits'])}: no synthetic clip (with ground truth) in "
                         "these splits of the clip table, so nothing can be measured")
    probe = _probe(study, clips, frames, gt)
    references = read_json(out_dir / "references.json")
    if references is None:
        references = measure.codec_and_probe_reference(held, frames, gt, codec, probe)
        write_json(out_dir / "references.json", references)
    data = {"pairs": pairs, "cache": cache, "codec": codec, "manifest": manifest,
            "deepspeed_config": deepspeed_config}
    batches = PairBatches(held, cache, {"reconstruction": 1.0}, 1, 0)  # example() only: the held-out conditions
    synthetic = clips[clips["gt_path"].fillna("").astype(bool)]  # any synthetic clip may drive the mismatched copy
    pool = dict(zip(synthetic["clip_id"], synthetic["motion_name"], strict=True))
    people = dict(zip(synthetic["clip_id"], synthetic["identity_id"], strict=True))

    def measure_unit(unit: Unit, model: DimoModel, summaries: list[dict]) -> dict:
        gaps = measure.motion_gaps(model, held, batches, params, unit.seed, pool, people)
        pose = measure.pose_following(model, codec, probe, held, batches, gt, params, unit.seed)
        table = held[["pair_id", "kind"]].assign(gap=gaps).merge(pose.drop(columns="kind"), on="pair_id")
        curve = {}
        for i, key in enumerate(unit.schedule[:-1]):  # the gap after each earlier stage: the curve's points
            earlier = DimoModel.from_pretrained(str(unit_dir(study, unit) / key))
            done = sum(unit.steps[k] for k in unit.schedule[: i + 1])
            curve[str(done)] = {"gap": float(np.nanmean(measure.motion_gaps(earlier, held, batches, params,
                                                                             unit.seed, pool, people)))}
        curve[str(sum(unit.steps.values()))] = {"gap": float(np.nanmean(gaps))}
        retrieval = measure.retrieval(model, held, batches)
        summary = {k: float(np.nanmean(table[k])) for k in table.columns if k not in ("pair_id", "kind")}
        summary |= {f"retrieval_{k}": float(np.nanmean(retrieval[k])) for k in retrieval.columns if k != "pair_id"}
        return {"pairs": table.to_dict("records"), "retrieval": retrieval.to_dict("records"), "curve": curve,
                "summary": summary}

    results = run_units(study, training, data, measure_unit, on_done=lambda: clock.add())
    wall = clock.add(run_done=True)
    return {"units": results, "references": references, "wall_seconds": wall["seconds"], "runs": wall["runs"]}


class _WallClock:
    """The study's run time summed over its runs, kept in `<output_dir>/wall.json` after each unit (a kill loses
    only the time since the last unit)."""

    def __init__(self, path: Path):
        self.path, self.last = path, time.perf_counter()

    def add(self, run_done: bool = False) -> dict:
        wall = read_json(self.path) or {"seconds": 0.0, "runs": 0}
        now = time.perf_counter()
        wall = {"seconds": wall["seconds"] + now - self.last, "runs": wall["runs"] + int(run_done)}
        self.last = now
        write_json(self.path, wall)
        return wall
