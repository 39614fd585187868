"""A sweep trial's proxy training, and one worker's loop over the study's trials (issue 8).

A trial suggests a schedule (`training.geometric_loss` start, end_step, shape; optionally lr), trains a short
proxy of stage1 -> stage2 -> stage3 with it from the stage-1 starting model (the registered base) through the
shared chain runner (`dimo.training.stages.run_chain`: same loop, same batches, no registration, each stage saved
in the trial's folder for the next one to start from), evaluates after each stage, reports the value and lets
the MedianPruner stop a bad trial early (the chain is closed: later stages are never trained). docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import optuna
import pandas as pd
from tqdm.auto import tqdm

from dimo.datasets import StudyStorage
from dimo.sweeps import objective as sweep_objective
from dimo.sweeps import study as sweep_study
from dimo.training.stages import PAPER_STAGES, StageResult, run_chain

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ a trial's schedule and proxy parameters
def suggest_schedule(trial: optuna.Trial, space: dict) -> dict:
    """The trial's schedule: start (float), end_step (int, in the full training's global steps), shape, and lr
    when `space["lr"]` is set. `space` entries are suggest_* keyword arguments (low, high, log, step)."""
    schedule = {"start": trial.suggest_float("start", **space["start"]),
                "end_step": trial.suggest_int("end_step", **space["end_step"]),
                "shape": trial.suggest_categorical("shape", list(space["shape"]))}
    if space.get("lr"):
        schedule["lr"] = trial.suggest_float("lr", **space["lr"])
    return schedule


def baseline_schedule(training: dict, space: dict) -> dict:
    """The current training schedule as trial parameters (enqueued as trial 0)."""
    geo = training["geometric_loss"]
    out = {"start": float(geo["start"]), "end_step": int(geo["end_step"]), "shape": geo["shape"]}
    if space.get("lr"):
        out["lr"] = float(training["lr"])
    return out


def proxy_end_step(end_step: int, training: dict, budget: dict, scale: bool) -> int:
    """The anneal end inside the proxy: the same fraction of its steps as `end_step` is of the full training's."""
    if not scale:
        return int(end_step)
    full = sum(int(training["stages"][s]["steps"]) for s in PAPER_STAGES)
    proxy = sum(int(budget[s]) for s in PAPER_STAGES)
    return int(round(end_step * proxy / max(full, 1)))


def proxy_training_params(training: dict, schedule: dict, sweep: dict, trial_dir: Path, stage1_init: str) -> dict:
    """Training parameters of a trial's proxy: the trial's schedule, the sweep's step budget, stage N+1 starting
    from stage N's weights in the trial folder, checkpoints in the trial folder, no sample grids."""
    from dimo.training.nodes import apply_schedule  # lazily: a worker that only claims trials starts faster

    budget = sweep["budget"]
    end_step = proxy_end_step(schedule["end_step"], training, budget, sweep["scale_end_step"])
    geo = {"start": schedule["start"], "end_step": end_step, "shape": schedule["shape"]}
    params = apply_schedule(training, {"geometric_loss": geo, "lr": schedule.get("lr")})
    params.update(checkpoint_dir=str(trial_dir / "checkpoints"), keep_checkpoints=False, sample_steps=0,
                  eval_every=0, geometric_loss_from_sweep=False)  # the trial's own schedule, never the file
    for i, stage in enumerate(PAPER_STAGES):
        init = stage1_init if i == 0 else str(trial_dir / PAPER_STAGES[i - 1])
        params["stages"][stage] = {**params["stages"][stage], "steps": int(budget[stage]), "init": init}
    return params


# ------------------------------------------------------------------ one trial
def run_trial(trial: optuna.Trial, space: dict, metric: str, train: Callable[[dict], Iterator[StageResult]],
              evaluate: Callable[[object], dict], on_stage: Callable[[int, str, dict], None] | None = None) -> float:
    """Suggest a schedule; `train(schedule)` is the proxy chain, a generator yielding a `StageResult` after each
    stage. Per stage: evaluate(model) -> {metric: mean}, report it at step = stage number (1, 2, 3) and prune when
    the MedianPruner says so (the generator is closed, so no later stage trains). Returns the value after the last
    stage. A non-finite value (a diverged trial) is pruned."""
    schedule = suggest_schedule(trial, space)
    value = math.nan
    with contextlib.closing(train(schedule)) as chain:
        for number, result in enumerate(chain, 1):
            means = evaluate(result.model)
            value = float(means[metric])
            trial.report(value, number)
            trial.set_user_attr(f"val_{result.stage}", {k: float(v) for k, v in means.items()})
            if on_stage:
                on_stage(number, result.stage, means)
            if not math.isfinite(value):
                raise optuna.TrialPruned(f"{result.stage}: {metric} is {value} (diverged)")
            if number < len(PAPER_STAGES) and trial.should_prune():  # nothing to save after the last stage
                raise optuna.TrialPruned(f"after {result.stage}: {metric} {value:.4g} is worse than the median of "
                                         "earlier trials at this stage")
    return value


def proxy_chain(trial: optuna.Trial, trial_dir: Path, training: dict, sweep: dict, stage1_init: str,
                data: tuple) -> Callable[[dict], Iterator[StageResult]]:
    """train(schedule) for `run_trial`: the proxy's parameters (logged before any training, so a failed trial
    shows them too), then `run_chain` over stage1..3 without registration, each stage saved in `trial_dir`.
    `data`: (pairs, cache, codec, manifest, deepspeed_config)."""
    def train(schedule: dict) -> Iterator[StageResult]:
        params = proxy_training_params(training, schedule, sweep, trial_dir, stage1_init)
        trial.set_user_attr("proxy_end_step", params["geometric_loss"]["end_step"])
        mlflow.log_params({**schedule, "proxy_end_step": params["geometric_loss"]["end_step"]})
        return run_chain(PAPER_STAGES, *data, params, register=False, save_dir=trial_dir)

    return train


def stage_logger(metric: str) -> Callable[[int, str, dict], None]:
    """on_stage for `run_trial`: the stage's finite values as step metrics `val.<metric>` and `objective`."""
    def on_stage(number: int, stage: str, means: dict) -> None:
        finite = {k: v for k, v in means.items() if math.isfinite(v)}
        mlflow.log_metrics({**{f"val.{k}": v for k, v in finite.items()},
                            **({"objective": finite[metric]} if metric in finite else {})}, step=number)

    return on_stage


# ------------------------------------------------------------------ one worker
def stage1_start(training: dict, storage: StudyStorage) -> tuple[str, str]:
    """(init for the proxy's stage 1, a description). A registry alias is fetched once, under the lock, so
    parallel workers do not download into the same cache folder at once; every trial then starts from it."""
    from dimo.training import handover, registry

    init = handover.resolve_init(training["stages"]["stage1"]["init"], training)  # the chain's folder, if any
    if not init.startswith("models:/"):
        return init, init

    with sweep_study.locked(storage.lock_path):
        folder = registry.download(init) / "dimo"
    return str(folder), f"{init} ({folder.parent.parent.name})"  # <version>-<run id>


def open_sweep(storage: StudyStorage, clips: pd.DataFrame, training: dict, sweep: dict
               ) -> tuple[optuna.Study, dict, pd.DataFrame]:
    """(study, objective, evaluation pairs): the objective is chosen on the pairs, the study named after it
    and the training setup, created or continued, and checked to measure that objective."""
    val_pairs = sweep_objective.evaluation_pairs(clips, sweep["evaluation"])
    metric, direction = sweep_objective.choose_objective(val_pairs, sweep)
    name = sweep_study.study_name(sweep, training, metric, direction)
    study = sweep_study.open_study(storage, name, direction, sweep)
    objective = {"metric": metric, "direction": direction, "split": sweep["evaluation"]["split"],
                 "kinds": list(sweep["evaluation"]["kinds"]), "pairs": len(val_pairs)}
    sweep_study.record_objective(study, objective)
    return study, objective, val_pairs


def shown_path(path: Path) -> str:
    """A path as the project records it: relative to the working directory (the project root) when inside it.
    Kedro hands datasets absolute paths; the best-params file and the MLflow tags keep the portable form."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_worker(storage: StudyStorage, clips: pd.DataFrame, pairs: pd.DataFrame, cache: dict, codec,
               manifest: dict, deepspeed_config: dict, training: dict, sweep: dict) -> dict:
    """Run this worker's share of the study: trials until the study holds `n_trials` finished ones. Returns what
    the export nodes need to find the study (name, storage file, objective, n_trials, whether lr was swept)."""
    study, objective, val_pairs = open_sweep(storage, clips, training, sweep)
    name, metric, where = study.study_name, objective["metric"], shown_path(storage.path)
    stage1_init, start_desc = stage1_start(training, storage)
    parent = mlflow.active_run()
    if parent is not None:
        mlflow.set_tags({"annealing_sweep.study": name, "annealing_sweep.storage": where,
                         "annealing_sweep.metric": metric, "annealing_sweep.direction": objective["direction"],
                         "annealing_sweep.stage1_init": start_desc})
    n_trials = int(sweep["n_trials"])
    trials_root = Path(sweep["trials_dir"]) / name
    evaluate = sweep_objective.make_evaluator(val_pairs, codec, manifest, sweep["evaluation"], metric)
    baseline = baseline_schedule(training, sweep["search_space"]) if sweep.get("enqueue_current") else None
    done = sweep_study.finished_count(study)
    log.info("annealing sweep: study %s in %s, %d of %d trials finished, objective %s (%s) on %d %s pairs",
             name, where, done, n_trials, metric, objective["direction"], len(val_pairs),
             sweep["evaluation"]["split"])
    states: dict[str, int] = {}
    bar = tqdm(total=max(n_trials - done, 0), desc="annealing sweep", unit="trial")
    while (trial := sweep_study.claim_trial(study, storage, n_trials, sweep, baseline)) is not None:
        trial_dir = trials_root / f"trial-{trial.number:04d}"
        train = proxy_chain(trial, trial_dir, training, sweep, stage1_init,
                            (pairs, cache, codec, manifest, deepspeed_config))
        try:
            state = sweep_study.execute_trial(
                study, trial, lambda t, train=train: run_trial(t, sweep["search_space"], metric, train, evaluate,
                                                               stage_logger(metric)), parent is not None)
        finally:
            if not sweep.get("keep_trial_models", False):
                shutil.rmtree(trial_dir, ignore_errors=True)
        states[state.name] = states.get(state.name, 0) + 1
        bar.update(1)
    bar.close()
    if parent is not None and states:
        mlflow.log_metrics({f"annealing_sweep.this_run.{k.lower()}": v for k, v in states.items()})
    log.info("annealing sweep: this run finished %s; no trial left to start (n_trials = %d, counting trials "
             "other workers are running)", states or "no trial", n_trials)
    return {"study_name": name, "storage": where, **objective, "n_trials": n_trials,
            "lr_swept": bool(sweep["search_space"].get("lr"))}
