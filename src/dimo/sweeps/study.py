"""The annealing sweep's Optuna study: its name, opening it, claiming trials between workers, recording a trial.

The study lives in one sqlite file (`StudyStorage`, the catalog's `annealing_sweep_study`) shared by any number
of workers on one machine (`kedro run --pipelines=annealing_sweep` started several times). Trials are claimed
under a file lock, so the study ends with exactly `n_trials` finished trials; a trial left RUNNING by a worker
that died is failed and its slot run again. docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from dimo.datasets import StudyStorage

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards n_trials (FAIL is retried)
# Training keys that do not change what a trial measures (left out of the study name's hash).
NOT_IN_STUDY_HASH = {"checkpoint_dir", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every",
                     "sample_steps", "geometric_loss_from_sweep", "registered_model_name"}


# ------------------------------------------------------------------ locking between worker processes
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


# ------------------------------------------------------------------ the study
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


def sampler_for(sweep: dict, trial_number: int) -> optuna.samplers.TPESampler:
    """TPE seeded by (seed, trial number): a trial's suggestion depends on the history, not on which of several
    workers asks, and two workers never share a random stream."""
    return optuna.samplers.TPESampler(seed=int(sweep["seed"]) + trial_number, **(sweep.get("sampler") or {}))


def open_study(storage: StudyStorage, name: str, direction: str, sweep: dict) -> optuna.Study:
    """Create the study or load it (`load_if_exists`): a re-run continues it. Concurrent writers wait for the
    sqlite lock (timeout) instead of failing with 'database is locked'."""
    pruner = optuna.pruners.MedianPruner(**sweep["pruner"])
    with locked(storage.lock_path):  # workers starting together would race creating the schema
        study = optuna.create_study(study_name=name, storage=storage.rdb(), direction=direction, pruner=pruner,
                                    sampler=sampler_for(sweep, 0), load_if_exists=True)
    if study.direction != optuna.study.StudyDirection[direction.upper()]:
        raise ValueError(f"study {name} in {storage.path} was created to {study.direction.name.lower()}, but "
                         f"annealing_sweep.objective asks to {direction}: name another study_name")
    return study


def load_study(storage: StudyStorage, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage.rdb())


def record_objective(study: optuna.Study, objective: dict) -> None:
    """Store the objective (metric, direction, split, kinds, pairs) on a new study; refuse a study that measures
    another metric or direction."""
    stored = study.user_attrs.get("objective")
    if stored and (stored["metric"], stored["direction"]) != (objective["metric"], objective["direction"]):
        raise ValueError(f"study {study.study_name} measures {stored['metric']} ({stored['direction']}) but this "
                         f"run would measure {objective['metric']} ({objective['direction']}): name another "
                         "annealing_sweep.study_name")
    if not stored:
        study.set_user_attr("objective", objective)


def finished_count(study: optuna.Study) -> int:
    return sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))


# ------------------------------------------------------------------ claiming trials
def fail_dead_trials(study: optuna.Study) -> list[int]:
    """RUNNING trials whose worker process is gone (killed, crashed): marked FAIL so their slot is run again."""
    dead = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") and not worker_alive(t.user_attrs["worker"])]
    for number in dead:
        study.tell(number, state=TrialState.FAIL)
        log.warning("annealing sweep: trial %d was left RUNNING by a worker that is gone: marked FAIL, its slot "
                    "runs again", number)
    return dead


def claim_trial(study: optuna.Study, storage: StudyStorage, n_trials: int, sweep: dict,
                baseline: dict | None = None) -> optuna.Trial | None:
    """The next trial of the study, or None once COMPLETE + PRUNED + RUNNING trials reach n_trials. Counting and
    asking happen under one lock, so parallel workers never start more than n_trials between them."""
    with locked(storage.lock_path):
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


# ------------------------------------------------------------------ recording one trial
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
