"""The project as a user drives it: kedro run, the MLflow store, DVC, the README commands."""

from __future__ import annotations

import re
import subprocess

import mlflow
import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT, run_cli


def test_readme_gives_two_commands_and_ci_runs_the_test_one():
    readme = (PROJECT_ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\$ (.+)$", quick, flags=re.M)
    assert commands == ["bash scripts/run.sh", "bash scripts/test.sh"]
    ci = [line for line in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == ["bash scripts/test.sh"]


def test_registry_lists_the_pipelines():
    out = run_cli(["kedro", "registry", "list"], cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr
    names = set(re.findall(r"^- (\S+)$", out.stdout, flags=re.M))
    assert {"__default__", "ingest", "validate"} <= names


@pytest.mark.slow
def test_kedro_run_on_good_and_broken_videos_quarantines_and_logs_to_mlflow(project_copy, write_clip):
    raw = project_copy / "data" / "01_raw" / "videos"
    write_clip(raw / "dance.mp4", n=40, fps=24)
    write_clip(raw / "wave.mov", n=40, fps=30, seed=3)
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    write_clip(raw / "blip.mp4", n=6)
    subprocess.run(["git", "init", "-q"], cwd=project_copy, check=True)

    out = run_cli(["kedro", "run", "--env=smoke", "--pipelines=ingest,validate"], cwd=project_copy)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    table = pd.read_parquet(project_copy / "data/03_primary/clip_table.parquet")
    assert set(table["source_path"].str.rsplit("/", n=1).str[-1]) == {"dance.mp4", "wave.mov"}
    assert all((project_copy / p).is_file() for p in table["path"])
    quarantine = pd.read_csv(project_copy / "data/03_primary/clip_quarantine.csv")
    reasons = dict(zip(quarantine["path"].str.rsplit("/", n=1).str[-1], quarantine["expectation"]))
    assert reasons == {"broken.mp4": "decodable", "blip.mp4": "at_least_one_window_of_17_frames"}
    assert (raw / "broken.mp4").exists()  # quarantined, never deleted

    mlflow.set_tracking_uri(f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["dimo"], output_format="list")}
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED" and "git_commit" in parent.data.tags
    assert parent.data.params["ingest.window_frames"] == "17"  # every node's params, in the `kedro run`'s run
    run = runs["validate"]  # each pipeline stage is a nested run with its own params, metrics and artifacts
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
    assert runs["ingest"].data.params["ingest.window_frames"] == "17" and "ingest.window_frames" not in run.data.params
    assert run.data.tags["git_commit"] == parent.data.tags["git_commit"]
    assert run.data.metrics["validation_metrics.clips_quarantined"] == 2
    assert "validation_metrics.clips_quarantined" not in parent.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"validation_report.md", "clip_quarantine.csv", "validation_results.json"} <= artifacts


@pytest.mark.slow
def test_dvc_repro_reruns_only_what_changed(project_copy, write_clip):
    write_clip(project_copy / "data/01_raw/videos/a.mp4", n=40)
    subprocess.run(["git", "init", "-q"], cwd=project_copy, check=True)
    assert run_cli(["dvc", "init", "-q"], cwd=project_copy).returncode == 0
    env = {"KEDRO_ENV": "smoke"}
    first = run_cli(["dvc", "repro", "validate"], cwd=project_copy, env=env)  # validate and what it needs
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert all(f"Running stage '{s}'" in first.stdout for s in ("synthesize_views", "ingest", "validate"))
    second = run_cli(["dvc", "repro", "validate"], cwd=project_copy, env=env)
    # only dvc_params, which writes the environment's parameters (unchanged) for the others, runs every time
    assert second.returncode == 0 and re.findall(r"Running stage '(\w+)'", second.stdout) == ["dvc_params"]
    # A validate-only parameter change reruns validate, not ingest.
    params = project_copy / "conf/base/parameters_validate.yml"
    params.write_text(params.read_text().replace("min_frames: 5", "min_frames: 9"))
    third = run_cli(["dvc", "repro", "validate"], cwd=project_copy, env=env)
    assert "Running stage 'validate'" in third.stdout and "Running stage 'ingest'" not in third.stdout


# ------------------------------------------------------------------ dvc.yaml and the pipelines follow STAGES

TRAINING_PARAMS = "dvc_params.yaml"  # src/dimo/dvc_params.py: the KEDRO_ENV environment's parameters


def _training_param_keys(dvc_stage: dict) -> set[str]:
    return {key for entry in dvc_stage.get("params", []) if isinstance(entry, dict)
            for key in entry.get(TRAINING_PARAMS, [])}


def _paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def dvc_stage_chain_problems(dvc: dict, stages, models_dir: str, default_chain) -> list[str]:
    """How dvc.yaml's training stages differ from `stages` (dimo.training.stages.STAGES): names and order, the
    predecessor's model folder as the only stage dependency, each stage's own parameters and outputs, the pair
    parameters preprocess reads, evaluate after the last stage, and a DVC stage for every default-chain pipeline."""
    problems = []
    dvc_stages = dvc["stages"]
    by_pipeline = {s.pipeline: s for s in stages}
    found = [name for name in dvc_stages if name in by_pipeline]
    if found != [s.pipeline for s in stages]:
        problems.append(f"training stages in dvc.yaml are {found}, STAGES says {[s.pipeline for s in stages]}")
    keys = [s.key for s in stages]
    for name in found:
        stage, spec = by_pipeline[name], dvc_stages[name]
        if spec["cmd"] != f"kedro run --pipelines={stage.pipeline}":
            problems.append(f"{name}: cmd {spec['cmd']!r} does not run its pipeline")
        stage_folders = {f"{models_dir}/{s.key}" for s in stages}  # training/handover.py: a stage starts from these
        waits_for = [d for d in spec.get("deps", []) if d.endswith("_registration.json") or d in stage_folders]
        expected = [f"{models_dir}/{stage.previous}"] if stage.previous else []
        if waits_for != expected:
            problems.append(f"{name}: depends on stage models {waits_for}, its predecessor gives {expected}")
        params = _training_param_keys(spec)
        own = {p.removeprefix("training.stages.") for p in params if p.startswith("training.stages.")}
        if own != {stage.key}:
            problems.append(f"{name}: reads training.stages.{sorted(own)}, expected only training.stages.{stage.key}")
        if ("training.geometric_loss_from_sweep" in params) != stage.paper:
            problems.append(f"{name}: training.geometric_loss_from_sweep is a parameter iff it is a paper stage")
        outs = _paths(spec.get("outs", []))
        for out in (f"{models_dir}/{stage.key}", f"{models_dir}/{stage.key}_registration.json"):
            if out not in outs:
                problems.append(f"{name}: {out} is not an out")
    pair_params = {p.split(".")[2] for p in _training_param_keys(dvc_stages["preprocess"])
                   if p.startswith("training.stages.")}
    if pair_params != set(keys):
        problems.append(f"preprocess reads the pair parameters of {sorted(pair_params)}, STAGES has {sorted(keys)}")
    last = f"{models_dir}/{stages[-1].key}"
    if last not in dvc_stages["evaluate"]["deps"]:
        problems.append(f"evaluate does not depend on {last}, the last stage's model folder")
    for name in default_chain:
        if dvc_stages.get(name, {}).get("cmd") != f"kedro run --pipelines={name}":
            problems.append(f"default-chain pipeline {name} has no DVC stage running it")
    return problems


def _project_dvc() -> tuple[dict, str]:
    import yaml

    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    models_dir = yaml.safe_load((PROJECT_ROOT / "conf/base/globals.yml").read_text())["paths"]["models"]
    return dvc, models_dir


def test_dvc_yaml_follows_the_stage_chain():
    from dimo.pipeline_registry import DEFAULT_CHAIN
    from dimo.training.stages import STAGES

    dvc, models_dir = _project_dvc()
    assert dvc_stage_chain_problems(dvc, STAGES, models_dir, DEFAULT_CHAIN) == []


def test_the_dvc_check_bites():
    import copy

    from dimo.pipeline_registry import DEFAULT_CHAIN
    from dimo.training.stages import STAGES

    dvc, models_dir = _project_dvc()
    swapped = copy.deepcopy(dvc)  # train_stage2 before train_stage1
    names = list(swapped["stages"])
    i, j = names.index("train_stage1"), names.index("train_stage2")
    names[i], names[j] = names[j], names[i]
    swapped["stages"] = {n: swapped["stages"][n] for n in names}
    assert any("training stages in dvc.yaml are" in p
               for p in dvc_stage_chain_problems(swapped, STAGES, models_dir, DEFAULT_CHAIN))

    renamed = copy.deepcopy(dvc)  # a stage renamed in dvc.yaml only
    renamed["stages"] = {("train_stage_two" if n == "train_stage2" else n): s for n, s in renamed["stages"].items()}
    problems = dvc_stage_chain_problems(renamed, STAGES, models_dir, DEFAULT_CHAIN)
    assert any("default-chain pipeline train_stage2 has no DVC stage" in p for p in problems)

    rewired = copy.deepcopy(dvc)  # stage3 waiting for stage1 instead of stage2
    deps = rewired["stages"]["train_stage3"]["deps"]
    deps[deps.index(f"{models_dir}/stage2")] = f"{models_dir}/stage1"
    assert any(p.startswith("train_stage3: depends on stage models")
               for p in dvc_stage_chain_problems(rewired, STAGES, models_dir, DEFAULT_CHAIN))


def test_registered_training_pipelines_follow_the_stage_chain():
    from dimo.pipeline_registry import DEFAULT_CHAIN, register_pipelines
    from dimo.training.stages import STAGES

    pipelines = register_pipelines()
    train_pipelines = [name for name in DEFAULT_CHAIN if name in {s.pipeline for s in STAGES}]
    assert train_pipelines == [s.pipeline for s in STAGES]  # the default chain trains them in STAGES order
    default_nodes = [n.name for n in pipelines["__default__"].nodes]
    for stage in STAGES:
        nodes = {n.name: n for n in pipelines[stage.pipeline].nodes}
        assert set(nodes) == {f"train_{stage.key}", f"register_{stage.key}"}
        train = nodes[f"train_{stage.key}"]
        assert set(train.outputs) == {f"{stage.key}_model", f"{stage.key}_summary"}
        assert set(train.inputs) == {"training_pairs", "latent_cache", "latent_codec", "preprocess_manifest",
                                     "deepspeed_config", "params:training"} \
            | ({f"{stage.previous}_registration"} if stage.previous else set()) \
            | ({"annealing_best_params"} if stage.paper else set())
        assert nodes[f"register_{stage.key}"].outputs == [f"{stage.key}_registration"]
        if stage.previous:  # Kedro orders the default run by these datasets
            assert default_nodes.index(f"train_{stage.key}") > default_nodes.index(f"register_{stage.previous}")
    folders = {p.name for p in (PROJECT_ROOT / "src/dimo/pipelines").iterdir()
               if (p / "pipeline.py").is_file() and p.name != "training"}
    assert folders <= set(pipelines), f"pipeline folders not registered: {sorted(folders - set(pipelines))}"


def test_every_registered_pipeline_is_an_mlproject_entry_point():
    import yaml

    from dimo.pipeline_registry import register_pipelines

    entry_points = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]
    expected = {"main"} | (set(register_pipelines()) - {"__default__"})
    assert set(entry_points) == expected
    for name, spec in entry_points.items():
        assert set(spec["parameters"]) == {"env", "params"}
        assert spec["command"].startswith("bash scripts/kedro_env.sh {env}")
        assert (f"--pipelines={name} " in spec["command"]) == (name != "main")
