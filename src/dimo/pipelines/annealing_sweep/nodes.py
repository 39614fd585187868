"""An Optuna study over the geometric-supervision schedule of training (issue 8).

A trial suggests a schedule (`training.geometric_loss` start, end_step, shape; optionally lr), trains a short
proxy of stage1 -> stage2 -> stage3 with it from the stage-1 starting model (the registered base), evaluates after
each stage on the evaluation split's view-rich pairs (`dimo.evaluation.benchmark`), reports the value and lets a
MedianPruner stop bad trials early. The proxy reuses the training node (`dimo.training.nodes.run_stage`): same
loop, same batches; it never registers models and trains in its own folder. The study lives in a sqlite file
shared by any number of workers (`kedro run --pipelines=annealing_sweep` started several times): trials are
claimed under a file lock, so the study ends with exactly `n_trials` finished trials. docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards n_trials (FAIL is retried)
# Training keys that do not change what a trial measures (left out of the study name's hash).
NOT_IN_STUDY_HASH = {"checkpoint_dir", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every",
                     "sample_steps", "geometric_loss_from_sweep", "registered_model_name"}


# ------------------------------------------------------------------ the study
def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def open_study(name: str, storage_path: str | Path, direction: str, sweep: dict) -> optuna.Study:
    """Create the study or load it (`load_if_exists`): a re-run continues it. Concurrent writers wait for the
    sqlite lock (timeout) instead of failing with 'database is locked'."""
    pruner = optuna.pruners.MedianPruner(**sweep["pruner"])
    with locked(lock_path(storage_path)):  # workers starting together would race creating the schema
        storage = optuna.storages.RDBStorage(sqlite_url(storage_path),
                                             engine_kwargs={"connect_args": {"timeout": 120}})
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, pruner=pruner,
                                    sampler=sampler_for(sweep, 0), load_if_exists=True)
    if study.direction != optuna.study.StudyDirection[direction.upper()]:
        raise ValueError(f"study {name} in {storage_path} was created to {study.direction.name.lower()}, but "
                         f"annealing_sweep.objective asks to {direction}: name another study_name")
    return study


def sampler_for(sweep: dict, trial_number: int) -> optuna.samplers.TPESampler:
    """TPE seeded by (seed, trial number): a trial's suggestion depends on the history, not on which of several
    workers asks, and two workers never share a random stream."""
    return optuna.samplers.TPESampler(seed=int(sweep["seed"]) + trial_number, **(sweep.get("sampler") or {}))


def study_name(sweep: dict, training: dict, metric: str, direction: str) -> str:
    """`annealing_sweep.study_name`, or one derived from everything a trial's value depends on (search space,
    budget, evaluation, objective, seed, the training setup), so changing any of them starts a new study and
    raising n_trials continues the same one."""
    if sweep.get("study_name"):
        return str(sweep["study_name"])
    train = {k: v for k, v in training.items() if k not in NOT_IN_STUDY_HASH}
    train["geometric_loss"] = {"end": training["geometric_loss"].get("end", 0.0)}  # the rest is searched
    payload = {"search_space": sweep["search_space"], "budget": sweep["budget"],
               "scale_end_step": sweep["scale_end_step"], "seed": sweep["seed"], "metric": metric,
               "direction": direction, "training": train,
               "evaluation": {k: v for k, v in sweep["evaluation"].items() if k != "weights"}}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"annealing_sweep-{digest}"


def lock_path(storage_path: str | Path) -> Path:
    return Path(f"{storage_path}.lock")


@contextlib.contextmanager
def locked(path: str | Path):
    """An exclusive lock between processes on this machine (sqlite storage means one machine)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), so a reused pid is not taken for a live worker."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def worker_alive(worker: str) -> bool:
    host, pid, started = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # cannot tell: leave it to its own machine
    return _start_time(int(pid)) == started


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """RUNNING trials whose worker process is gone (killed, crashed): marked FAIL so their slot is run again."""
    dead = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") and not worker_alive(t.user_attrs["worker"])]
    for number in dead:
        study.tell(number, state=TrialState.FAIL)
        log.warning("annealing sweep: trial %d was left RUNNING by a worker that is gone: marked FAIL, its slot "
                    "runs again", number)
    return dead


def claim_trial(study: optuna.Study, n_trials: int, lock: str | Path, sweep: dict,
                baseline: dict | None = None) -> optuna.Trial | None:
    """The next trial of the study, or None once COMPLETE + PRUNED + RUNNING trials reach n_trials. Counting and
    asking happen under one lock, so parallel workers never start more than n_trials between them."""
    with locked(lock):
        fail_dead_trials(study)
        trials = study.get_trials(deepcopy=False)
        taken = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)
        if taken >= n_trials:
            return None
        if baseline and not trials:  # trial 0: the schedule training uses now, the one to beat
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
        study.sampler = sampler_for(sweep, len(study.get_trials(deepcopy=False)))
        trial = study.ask()
        trial.set_user_attr("worker", worker_id())
        return trial


# ------------------------------------------------------------------ one trial
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
    from dimo.training.stages import PAPER_STAGES as STAGE_ORDER  # lazily: a worker that only claims trials starts faster

    if not scale:
        return int(end_step)
    full = sum(int(training["stages"][s]["steps"]) for s in STAGE_ORDER)
    proxy = sum(int(budget[s]) for s in STAGE_ORDER)
    return int(round(end_step * proxy / max(full, 1)))


def proxy_training_params(training: dict, schedule: dict, sweep: dict, trial_dir: Path, stage1_init: str) -> dict:
    """Training parameters of a trial's proxy: the trial's schedule, the sweep's step budget, stage N+1 starting
    from stage N's weights in the trial folder, checkpoints in the trial folder, no sample grids."""
    from dimo.training.nodes import apply_schedule
    from dimo.training.stages import PAPER_STAGES as STAGE_ORDER

    budget = sweep["budget"]
    end_step = proxy_end_step(schedule["end_step"], training, budget, sweep["scale_end_step"])
    geo = {"start": schedule["start"], "end_step": end_step, "shape": schedule["shape"]}
    params = apply_schedule(training, {"geometric_loss": geo, "lr": schedule.get("lr")})
    params.update(checkpoint_dir=str(trial_dir / "checkpoints"), keep_checkpoints=False, sample_steps=0,
                  eval_every=0, geometric_loss_from_sweep=False)  # the trial's own schedule, never the file
    for i, stage in enumerate(STAGE_ORDER):
        init = stage1_init if i == 0 else str(trial_dir / STAGE_ORDER[i - 1])
        params["stages"][stage] = {**params["stages"][stage], "steps": int(budget[stage]), "init": init}
    return params


def run_trial(trial: optuna.Trial, space: dict, metric: str, train: Callable[[str, dict], object],
              evaluate: Callable[[object], dict], on_stage: Callable[[int, str, dict], None] | None = None) -> float:
    """Suggest a schedule, then per proxy stage: train(stage, schedule) -> model, evaluate(model) -> {metric:
    mean}, report it at step = stage number (1, 2, 3) and prune when the MedianPruner says so. Returns the value
    after the last stage. A non-finite value (a diverged trial) is pruned."""
    from dimo.training.stages import PAPER_STAGES as STAGE_ORDER

    schedule = suggest_schedule(trial, space)
    value = math.nan
    for number, stage in enumerate(STAGE_ORDER, 1):
        model = train(stage, schedule)
        means = evaluate(model)
        value = float(means[metric])
        trial.report(value, number)
        trial.set_user_attr(f"val_{stage}", {k: float(v) for k, v in means.items()})
        if on_stage:
            on_stage(number, stage, means)
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{stage}: {metric} is {value} (diverged)")
        if number < len(STAGE_ORDER) and trial.should_prune():  # nothing to save after the last stage
            raise optuna.TrialPruned(f"after {stage}: {metric} {value:.4g} is worse than the median of earlier "
                                     "trials at this stage")
    return value


def execute_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float],
                  parent_active: bool) -> TrialState:
    """Run the objective inside a nested MLflow run `trial-<n>` and tell the study how it ended. The run holds
    the trial's parameters, the per-stage values as step metrics, the final value and the state as a tag."""
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"trial-{trial.number}", nested=parent_active) as run:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        mlflow.set_tags({"optuna.study": study.study_name, "optuna.trial": trial.number, "optuna.state": "RUNNING",
                         "optuna.worker": trial.user_attrs.get("worker", "")})
        try:
            value = objective(trial)
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=TrialState.PRUNED)
            mlflow.set_tags({"optuna.state": "PRUNED", "optuna.pruned_because": str(pruned)})
            log.info("annealing sweep: trial %d pruned: %s", trial.number, pruned)
            state = TrialState.PRUNED
        except BaseException as err:  # a bug or Ctrl-C: recorded as FAIL (retried by the next run), then raised
            study.tell(trial, state=TrialState.FAIL)
            mlflow.set_tags({"optuna.state": "FAIL", "optuna.error": f"{type(err).__name__}: {err}"[:5000]})
            raise
        else:
            study.tell(trial, value)
            mlflow.log_metric("value", value)
            mlflow.set_tag("optuna.state", "COMPLETE")
            state = TrialState.COMPLETE
        mlflow.log_params(trial.params)
        mlflow.log_metric("trial_seconds", time.perf_counter() - started)
    return state


# ------------------------------------------------------------------ evaluation
def evaluation_pairs(clips: pd.DataFrame, evaluation: dict) -> pd.DataFrame:
    from dimo.evaluation import benchmark

    kinds = tuple(evaluation["kinds"])
    pairs = benchmark.benchmark_pairs(clips, split=evaluation["split"], kinds=kinds,
                                      max_pairs=evaluation.get("max_pairs"))
    if pairs.empty:
        raise ValueError(f"annealing_sweep: the {evaluation['split']!r} split of labelled_clip_table has no "
                         f"{'/'.join(kinds)} pairs (a view-rich group needs 2+ views in that split): synthesise "
                         "more performances or change annealing_sweep.evaluation.split / kinds")
    return pairs


def choose_objective(pairs: pd.DataFrame, sweep: dict) -> tuple[str, str]:
    """(metric, direction). The metric is probed once on a target against itself; when it cannot be computed
    (LPIPS weights missing), `objective.fallback` is used with a warning, or the sweep stops with the reason.
    The choice is made before the study opens and is part of its name: a study never mixes metrics."""
    from dimo.evaluation import benchmark

    objective = sweep["objective"]
    metric, direction = objective["metric"], objective["direction"]
    _check_direction(metric, direction)
    row = pairs.iloc[0]
    probe = benchmark.score(pairs.iloc[:1], {row["pair_id"]: benchmark.read_target(row["target_path"])},
                            metrics=(metric,), weights=sweep["evaluation"].get("weights") or None, progress=False)
    if np.isfinite(probe[metric].to_numpy(float)).all():
        return metric, direction
    reason = probe["unavailable"].iloc[0] or "not a finite number"
    fallback = objective.get("fallback")
    if not fallback:
        raise ValueError(f"annealing_sweep.objective.metric {metric} cannot be computed ({reason}); provide its "
                         "weights (docs/evaluation.md) or set annealing_sweep.objective.fallback")
    _check_direction(fallback["metric"], fallback["direction"])
    log.warning("annealing sweep: %s cannot be computed (%s): the objective is %s (%s) instead", metric, reason,
                fallback["metric"], fallback["direction"])
    return fallback["metric"], fallback["direction"]


def _check_direction(metric: str, direction: str) -> None:
    from dimo.evaluation import benchmark

    if metric not in benchmark.PER_PAIR_METRICS:
        raise ValueError(f"annealing_sweep.objective: unknown metric {metric!r}; one of {benchmark.PER_PAIR_METRICS}")
    better = "maximize" if benchmark.HIGHER_IS_BETTER[metric] else "minimize"
    if direction != better:
        raise ValueError(f"annealing_sweep.objective: {metric} should be {better}d, not {direction}d")


def make_evaluator(pairs: pd.DataFrame, codec, manifest: dict, evaluation: dict, metric: str) -> Callable:
    """evaluate(model) -> {metric: mean over the pairs} for the objective and the other configured metrics."""
    from dimo import inference
    from dimo.evaluation import benchmark

    metrics = tuple(dict.fromkeys([metric, *evaluation.get("metrics", [])]))
    options = inference.Options(num_steps=int(evaluation["num_steps"]), guidance_text=float(evaluation["guidance_text"]),
                                seed=int(evaluation["seed"]), target_area=evaluation.get("target_area"),
                                max_frames=evaluation.get("max_frames"), progress=False)

    def evaluate(model) -> dict:
        scores, _ = benchmark.evaluate_model(model, codec, manifest["text_encoder"], pairs, options, metrics,
                                             evaluation.get("weights") or None, progress=False)
        return {m: float(scores[m].mean()) for m in metrics}

    return evaluate


# ------------------------------------------------------------------ nodes
def stage1_start(training: dict, lock: str | Path) -> tuple[str, str]:
    """(init for the proxy's stage 1, a description). A registry alias is fetched once, under the lock, so
    parallel workers do not download into the same cache folder at once; every trial then starts from it."""
    init = training["stages"]["stage1"]["init"]
    if not init.startswith("models:/"):
        return init, init
    from dimo.training import registry

    with locked(lock):
        folder = registry.download(init) / "dimo"
    return str(folder), f"{init} ({folder.parent.parent.name})"  # <version>-<run id>


def run_annealing_sweep(clips: pd.DataFrame, pairs: pd.DataFrame, cache: dict, codec, manifest: dict,
                        deepspeed_config: dict, training: dict, sweep: dict) -> dict:
    """Run this worker's share of the study: trials until the study holds `n_trials` finished ones.
    Returns what the export nodes need to find the study."""
    from dimo.training.nodes import run_stage
    from dimo.training.stages import PAPER_STAGES as STAGE_ORDER

    val_pairs = evaluation_pairs(clips, sweep["evaluation"])
    metric, direction = choose_objective(val_pairs, sweep)
    name = study_name(sweep, training, metric, direction)
    storage_path = Path(sweep["storage"])
    lock = lock_path(storage_path)
    study = open_study(name, storage_path, direction, sweep)
    objective_info = {"metric": metric, "direction": direction, "split": sweep["evaluation"]["split"],
                      "kinds": list(sweep["evaluation"]["kinds"]), "pairs": len(val_pairs)}
    stored = study.user_attrs.get("objective")
    if stored and (stored["metric"], stored["direction"]) != (metric, direction):
        raise ValueError(f"study {name} measures {stored['metric']} ({stored['direction']}) but this run would "
                         f"measure {metric} ({direction}): name another annealing_sweep.study_name")
    if not stored:
        study.set_user_attr("objective", objective_info)
    stage1_init, start_desc = stage1_start(training, lock)
    parent = mlflow.active_run()
    if parent is not None:
        mlflow.set_tags({"annealing_sweep.study": name, "annealing_sweep.storage": str(storage_path),
                         "annealing_sweep.metric": metric, "annealing_sweep.direction": direction,
                         "annealing_sweep.stage1_init": start_desc})

    n_trials = int(sweep["n_trials"])
    trials_root = Path(sweep["trials_dir"]) / name
    evaluate = make_evaluator(val_pairs, codec, manifest, sweep["evaluation"], metric)
    baseline = baseline_schedule(training, sweep["search_space"]) if sweep.get("enqueue_current") else None
    done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    log.info("annealing sweep: study %s in %s, %d of %d trials finished, objective %s (%s) on %d %s pairs",
             name, storage_path, done, n_trials, metric, direction, len(val_pairs), sweep["evaluation"]["split"])
    states: dict[str, int] = {}
    bar = tqdm(total=max(n_trials - done, 0), desc="annealing sweep", unit="trial")
    while (trial := claim_trial(study, n_trials, lock, sweep, baseline)) is not None:
        trial_dir = trials_root / f"trial-{trial.number:04d}"

        def train(stage: str, schedule: dict, trial=trial, trial_dir=trial_dir):
            params = proxy_training_params(training, schedule, sweep, trial_dir, stage1_init)
            if stage == STAGE_ORDER[0]:  # logged before training, so a failed trial shows them too
                trial.set_user_attr("proxy_end_step", params["geometric_loss"]["end_step"])
                mlflow.log_params({**schedule, "proxy_end_step": params["geometric_loss"]["end_step"]})
            model, _ = run_stage(stage, pairs, cache, codec, manifest, deepspeed_config, params)
            model.save_pretrained(str(trial_dir / stage))  # the next proxy stage starts from it
            return model

        def on_stage(number: int, stage: str, means: dict) -> None:
            finite = {k: v for k, v in means.items() if math.isfinite(v)}
            mlflow.log_metrics({**{f"val.{k}": v for k, v in finite.items()},
                                **({"objective": finite[metric]} if metric in finite else {})}, step=number)

        try:
            state = execute_trial(study, trial, lambda t: run_trial(t, sweep["search_space"], metric, train,
                                                                       evaluate, on_stage), parent is not None)
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
    return {"study_name": name, "storage": str(storage_path), **objective_info, "n_trials": n_trials,
            "lr_swept": bool(sweep["search_space"].get("lr"))}


def load_study(info: dict) -> optuna.Study:
    return optuna.load_study(study_name=info["study_name"], storage=optuna.storages.RDBStorage(
        sqlite_url(info["storage"]), engine_kwargs={"connect_args": {"timeout": 120}}))


def trials_table(info: dict) -> pd.DataFrame:
    """Every trial of the study (all workers): number, state, value, parameters, per-stage values, MLflow run."""
    study = load_study(info)
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "intermediate_values",
                                          "user_attrs", "datetime_start", "duration"))
    if "duration" in table:
        table["duration"] = table["duration"].dt.total_seconds()
    table = table.rename(columns={"duration": "seconds"})
    for column in [c for c in table.columns if table[c].map(lambda v: isinstance(v, dict)).any()]:
        table[column] = table[column].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
    table.insert(0, "study", info["study_name"])
    table["metric"] = info["metric"]
    return table


def best_params(info: dict) -> dict:
    """The best complete trial's schedule in the full training's units, for `training.geometric_loss_from_sweep`."""
    study = load_study(info)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"study {info['study_name']} has no complete trial (all pruned or failed): no best "
                         "parameters; see the trials table and the MLflow trial runs")
    best = study.best_trial
    out = {"study": info["study_name"], "storage": info["storage"], "trial": best.number,
           "objective": {"metric": info["metric"], "direction": info["direction"], "value": float(best.value),
                         "split": info["split"], "kinds": info["kinds"], "pairs": info["pairs"]},
           "trials": {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
                      for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
           "geometric_loss": {"start": float(best.params["start"]), "end_step": int(best.params["end_step"]),
                              "shape": best.params["shape"]}}
    if "lr" in best.params:
        out["lr"] = float(best.params["lr"])
    if mlflow.active_run() is not None:
        mlflow.log_dict(out, "annealing_sweep/best_params.yml")
        mlflow.log_metrics({"annealing_sweep.best_value": float(best.value), "annealing_sweep.best_trial": best.number,
                            **{f"annealing_sweep.trials_{k}": v for k, v in out["trials"].items()}})
    log.info("annealing sweep: best trial %d, %s = %.4g, schedule %s%s", best.number, info["metric"], best.value,
             out["geometric_loss"], f", lr {out['lr']:.3g}" if "lr" in out else "")
    return out


def _note_figure(title: str, note: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
    return fig


def sweep_plots(info: dict) -> tuple:
    """Optimisation history and parameter importances (optuna.visualization.matplotlib). Importances need 2+
    complete trials whose parameters differ; with fewer the figure says so and a note is logged."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    study = load_study(info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = ovm.plot_optimization_history(study, target_name=info["metric"]).figure
        history.tight_layout()
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        varied = len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2
        importance = None
        if varied:
            try:
                importance = ovm.plot_param_importances(study, target_name=info["metric"]).figure
                importance.tight_layout()
            except (ValueError, RuntimeError) as err:  # e.g. every trial has the same value
                note = f"parameter importances unavailable: {err}"
        else:
            note = (f"parameter importances need at least 2 complete trials with different parameters "
                    f"(the study has {len(complete)} complete)")
    if importance is None:
        log.info("annealing sweep: %s", note)
        importance = _note_figure("Parameter importances", note)
    return history, importance
