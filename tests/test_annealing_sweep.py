"""The annealing sweep (issue 8): an Optuna study over the geometric-loss schedule, run for real on the smoke
project (3 trials, nested MLflow runs, best-params file read by train_stage1, a re-run by two concurrent workers
that adds only the missing trials), plus fast checks of pruning, slot claiming and the objective's fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from dimo.datasets import OptionalYAMLDataset, OptunaStudyDataset
from dimo.models.schedules import AnnealSchedule
from dimo.pipeline_registry import DEFAULT_CHAIN
from dimo.sweeps import objective as sweep_objective
from dimo.sweeps import proxy as sweep_proxy
from dimo.sweeps import study as sweep_study
from dimo.training import nodes as train_nodes
from dimo.training.stages import PAPER_STAGES, StageResult
from tests.conftest import VENV_BIN, run_cli, smoke_project

STORAGE = "data/06_models/optuna/annealing_sweep.db"
UP_TO_BASE = ",".join(DEFAULT_CHAIN[: DEFAULT_CHAIN.index("pretrain_generator") + 1])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A smoke project copy with the chain run up to the registered base model (what a sweep starts from)."""
    dst = smoke_project(tmp_path_factory.mktemp("sweep") / "project")  # LPIPS weights: the objective
    out = run_cli(["kedro", "run", "--env=smoke", f"--pipelines={UP_TO_BASE}"], cwd=dst, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    return dst


@pytest.fixture(scope="module")
def swept(project):
    """One `kedro run`: a 3-trial smoke sweep, then train_stage1 with training.geometric_loss_from_sweep."""
    out = run_cli(["kedro", "run", "--env=smoke", "--pipelines=annealing_sweep,train_stage1",
                   "--params=training.geometric_loss_from_sweep=true"], cwd=project, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return project


def _study(project: Path) -> str:
    return yaml.safe_load((project / "data/06_models/optuna/annealing_best_params.yml").read_text())["study"]


def finished(project: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=_study(project), storage=f"sqlite:///{project / STORAGE}")
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def trial_runs(parent_id: str) -> list:
    return mlflow.search_runs(experiment_names=["dimo"], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              output_format="list")


def test_smoke_sweep_writes_trials_nested_runs_and_best_params(swept):
    trials = pd.read_csv(swept / "data/08_reporting/annealing_sweep_trials.csv")
    assert len(trials) == 3 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert trials["params_shape"].isin(["linear", "cosine", "step"]).all()
    assert trials.loc[0, "user_attrs_baseline"]  # trial 0 is the current schedule (smoke: 0.1, 6, linear)
    assert (trials.loc[0, "params_start"], trials.loc[0, "params_end_step"]) == (0.1, 6)
    assert len(finished(swept)) == 3

    best = yaml.safe_load((swept / "data/06_models/optuna/annealing_best_params.yml").read_text())
    assert set(best["geometric_loss"]) == {"start", "end_step", "shape"} and "lr" not in best
    assert best["objective"]["metric"] in ("lpips_alex", "psnr") and best["trials"]["complete"] >= 1
    complete = trials[trials["state"] == "COMPLETE"]
    pick = complete["value"].idxmin() if best["objective"]["direction"] == "minimize" else complete["value"].idxmax()
    assert best["trial"] == complete.loc[pick, "number"]
    for name in ("annealing_sweep_history.png", "annealing_sweep_importance.png"):
        assert (swept / "data/08_reporting" / name).stat().st_size > 0

    parent = mlflow.search_runs(experiment_names=["dimo"], output_format="list",
                                filter_string=f"tags.`annealing_sweep.study` = '{best['study']}'")
    assert len(parent) == 1
    children = trial_runs(parent[0].info.run_id)
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1", "trial-2"]
    for run in children:
        assert run.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")
        assert {"start", "end_step", "shape", "proxy_end_step"} <= set(run.data.params)
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "objective")]
        assert steps == sorted(steps) and steps[0] == 1  # one value per proxy stage reached
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent[0].info.run_id, "annealing_sweep")}
    assert {"annealing_sweep/annealing_sweep_trials.csv", "annealing_sweep/best_params.yml"} <= artifacts

    # trials never register models nor write the main run's stage folders; their own folders are removed
    versions = mlflow.MlflowClient().search_model_versions("name = 'dimo'")
    assert sorted(v.tags["stage"] for v in versions) == ["pretrain", "stage1"]  # base + the train_stage1 node
    assert not (swept / "data/06_models/stage2").exists()
    assert not any((swept / "data/06_models/optuna/trials").glob("*/trial-*"))


def test_training_stage_follows_the_best_params_file(swept):
    best = yaml.safe_load((swept / "data/06_models/optuna/annealing_best_params.yml").read_text())
    summary = yaml.safe_load((swept / "data/06_models/stage1_summary.json").read_text())
    assert summary["geometric_loss_from_sweep"] == {"study": best["study"], "trial": best["trial"]}
    assert {k: summary["geometric_loss"][k] for k in ("start", "end_step", "shape")} == best["geometric_loss"]
    run_id = mlflow.MlflowClient().get_model_version_by_alias("dimo", "stage1").run_id
    history = mlflow.MlflowClient().get_metric_history(run_id, "stage1.geometric_weight")
    expected = AnnealSchedule(**{**best["geometric_loss"], "end": 0.0})
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [m.value for m in history] == pytest.approx([expected.weight(m.step) for m in history], abs=1e-6)


def test_rerun_by_two_workers_adds_only_the_missing_trials(swept):
    before = {t.number for t in finished(swept)}
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(VENV_BIN / "kedro"), "run", "--env=smoke", "--pipelines=annealing_sweep",
           "--params=annealing_sweep.n_trials=5"]
    workers = [subprocess.Popen(cmd, cwd=swept, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    after = finished(swept)
    assert len(after) == 5 and before <= {t.number for t in after}  # 2 more, never more than n_trials
    study = optuna.load_study(study_name=_study(swept), storage=f"sqlite:///{swept / STORAGE}")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    trials = pd.read_csv(swept / "data/08_reporting/annealing_sweep_trials.csv")
    assert len(trials) == 5 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}  # the last export is complete


# ------------------------------------------------------------------ fast checks, no Kedro run


SPACE = {"start": {"low": 0.0, "high": 0.3}, "end_step": {"low": 0, "high": 10}, "shape": ["linear", "cosine"]}


@pytest.fixture
def tracking(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield
    mlflow.set_tracking_uri(previous)


def test_median_pruner_stops_a_bad_trial_after_its_first_stage(tmp_path, tracking):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="minimize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    trained, closed = [], []

    def objective_with(values):
        def chain(schedule):  # what run_chain yields: one StageResult per stage, trained when asked for
            try:
                for stage in PAPER_STAGES:
                    trained.append(stage)
                    yield StageResult(stage, stage, {"schedule": schedule}, None)
            finally:
                closed.append(True)

        return lambda trial: sweep_proxy.run_trial(trial, SPACE, "lpips_alex", chain,
                                                   lambda stage: {"lpips_alex": values[stage]})

    good = {"stage1": 0.5, "stage2": 0.4, "stage3": 0.3}
    with mlflow.start_run(run_name="sweep") as parent:
        for values in (good, {k: v + 0.01 for k, v in good.items()}):
            assert sweep_study.execute_trial(study, study.ask(), objective_with(values), True) == TrialState.COMPLETE
        assert trained == list(PAPER_STAGES) * 2 and len(closed) == 2
        trained.clear(), closed.clear()
        bad = {"stage1": 0.9, "stage2": 0.9, "stage3": 0.9}
        assert sweep_study.execute_trial(study, study.ask(), objective_with(bad), True) == TrialState.PRUNED
    assert trained == ["stage1"] and closed == [True]  # pruned before stage 2 was trained; the chain was closed
    runs = {r.info.run_name: r for r in trial_runs(parent.info.run_id)}
    assert runs["trial-2"].data.tags["optuna.state"] == "PRUNED" and "median" in runs["trial-2"].data.tags[
        "optuna.pruned_because"]
    assert runs["trial-0"].data.metrics["value"] == pytest.approx(0.3)
    assert study.trials[2].intermediate_values == {1: 0.9}


WORKER = textwrap.dedent("""
    import sys, time, optuna
    from dimo.sweeps import study as sweep_study
    from dimo.datasets import OptunaStudyDataset
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, n = OptunaStudyDataset(sys.argv[1]).load(), int(sys.argv[2])
    sweep = {"seed": 0, "sampler": {}, "pruner": {}}
    study = sweep_study.open_study(storage, "parallel", "minimize", sweep)
    while (trial := sweep_study.claim_trial(study, storage, n, sweep)) is not None:
        x = trial.suggest_float("x", 0, 1)
        time.sleep(0.2)
        study.tell(trial, x)
""")


def test_parallel_workers_never_run_more_than_n_trials(tmp_path):
    storage = str(tmp_path / "study.db")
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, storage, "8"], stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], errors
    study = optuna.load_study(study_name="parallel", storage=f"sqlite:///{storage}")
    assert len(study.trials) == 8 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2  # shared between processes


def test_a_trial_left_running_by_a_dead_worker_is_failed_and_its_slot_rerun(tmp_path):
    dataset = OptunaStudyDataset(str(tmp_path / "study.db"))
    assert not dataset.exists()  # the sweep creates the file
    storage = dataset.load()
    sweep = {"seed": 0, "sampler": {}, "pruner": {}}
    study = sweep_study.open_study(storage, "s", "minimize", sweep)
    assert dataset.exists() and storage.lock_path == tmp_path / "study.db.lock"
    orphan = study.ask()
    orphan.set_user_attr("worker", f"{os.uname().nodename}:999999999:0")  # no such process
    trial = sweep_study.claim_trial(study, storage, 1, sweep)
    assert trial is not None and trial.number == 1
    assert study.trials[0].state == TrialState.FAIL
    assert sweep_study.claim_trial(study, storage, 1, sweep) is None  # its own slot is taken now
    with pytest.raises(ValueError, match="was created to minimize"):  # a study never changes direction
        sweep_study.open_study(storage, "s", "maximize", sweep)


def test_objective_falls_back_to_psnr_when_lpips_weights_are_missing(tmp_path, write_clip):
    target = write_clip(tmp_path / "target.mp4", n=9, height=64, width=64)
    pairs = pd.DataFrame([{"pair_id": "p0", "target_path": str(target)}])
    sweep = {"objective": {"metric": "lpips_alex", "direction": "minimize",
                           "fallback": {"metric": "psnr", "direction": "maximize"}},
             "evaluation": {"weights": {"lpips_dir": str(tmp_path / "no-weights")}}}
    assert sweep_objective.choose_objective(pairs, sweep) == ("psnr", "maximize")
    sweep["objective"]["fallback"] = None
    with pytest.raises(ValueError, match=r"lpips_alex cannot be computed .*no-weights"):
        sweep_objective.choose_objective(pairs, sweep)
    sweep["objective"]["direction"] = "maximize"
    with pytest.raises(ValueError, match="lpips_alex should be minimized"):
        sweep_objective.choose_objective(pairs, sweep)


def training_params() -> dict:
    return {"lr": 1e-3, "seed": 0, "model": {}, "batch": {}, "geometric_loss_from_sweep": True,
            "geometric_loss": {"start": 0.1, "end": 0.0, "end_step": 6, "shape": "linear"},
            "stages": {s: {"steps": n, "init": "models:/dimo@base", "lr": 5e-4}
                       for s, n in (("pretrain", 4), ("stage1", 4), ("stage2", 4), ("stage3", 2))}}


def test_best_params_apply_only_with_the_flag_and_a_missing_file_says_what_to_run(tmp_path):
    path = tmp_path / "best.yml"
    assert OptionalYAMLDataset(str(path)).load() is None
    with pytest.raises(FileNotFoundError,
                       match=r"annealing_best_params file .* does not exist: "
                             r"run `kedro run --pipelines=annealing_sweep`"):
        train_nodes.effective_params("stage2", training_params(), OptionalYAMLDataset(str(path)).load())
    OptionalYAMLDataset(str(path)).save({"study": "s", "trial": 3, "lr": 2e-3,
                                         "geometric_loss": {"start": 0.3, "end_step": 9, "shape": "step"}})
    best = OptionalYAMLDataset(str(path)).load()
    params = train_nodes.effective_params("stage2", training_params(), best)
    assert params["geometric_loss"] == {"start": 0.3, "end": 0.0, "end_step": 9, "shape": "step"}
    assert params["lr"] == 2e-3 and "lr" not in params["stages"]["stage2"]  # the swept rate, every stage
    assert train_nodes.effective_params("pretrain", training_params(), best)["lr"] == 1e-3
    off = {**training_params(), "geometric_loss_from_sweep": False}
    assert train_nodes.effective_params("stage2", off, None) is off  # the file is ignored
    on = training_params()
    assert train_nodes.effective_params("stage2", on) is on  # a caller without the dataset (ablations)
    with pytest.raises(FileNotFoundError, match="the annealing_best_params file"):  # loaded as None: missing
        train_nodes.effective_params("stage2", on, None)
    pairs = pd.DataFrame({"a": [1]})
    assert train_nodes.fingerprint("stage2", params, pairs) != train_nodes.fingerprint("stage2", off, pairs)


def test_proxy_trains_the_budget_from_the_trial_folder_and_study_names_follow_what_matters(tmp_path):
    sweep = {"budget": {"stage1": 1, "stage2": 2, "stage3": 2}, "scale_end_step": True, "search_space": SPACE,
             "seed": 0, "evaluation": {"split": "val"}, "n_trials": 3}
    schedule = {"start": 0.2, "end_step": 10, "shape": "cosine"}
    params = sweep_proxy.proxy_training_params(training_params(), schedule, sweep, tmp_path, "/base")
    assert params["geometric_loss"] == {"start": 0.2, "end": 0.0, "end_step": 5, "shape": "cosine"}  # 10 x 5/10
    assert [params["stages"][s]["steps"] for s in ("stage1", "stage2", "stage3")] == [1, 2, 2]
    assert [params["stages"][s]["init"] for s in ("stage1", "stage2", "stage3")] == \
        ["/base", str(tmp_path / "stage1"), str(tmp_path / "stage2")]
    assert params["checkpoint_dir"] == str(tmp_path / "checkpoints") and not params["geometric_loss_from_sweep"]
    name = sweep_study.study_name(sweep, training_params(), "psnr", "maximize")
    assert name.startswith("annealing_sweep-")
    assert sweep_study.study_name({**sweep, "n_trials": 9}, training_params(), "psnr", "maximize") == name
    assert sweep_study.study_name({**sweep, "budget": {**sweep["budget"], "stage3": 3}}, training_params(), "psnr",
                                  "maximize") != name
    assert sweep_study.study_name(sweep, training_params(), "lpips_alex", "minimize") != name
