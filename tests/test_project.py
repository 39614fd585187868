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
    run = mlflow.search_runs(experiment_names=["dimo"], output_format="list")[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["ingest.window_frames"] == "17"
    assert "git_commit" in run.data.tags
    assert run.data.metrics["validation_metrics.clips_quarantined"] == 2
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
    assert second.returncode == 0 and "Running stage" not in second.stdout
    # A validate-only parameter change reruns validate, not ingest.
    params = project_copy / "conf/base/parameters_validate.yml"
    params.write_text(params.read_text().replace("min_frames: 5", "min_frames: 9"))
    third = run_cli(["dvc", "repro", "validate"], cwd=project_copy, env=env)
    assert "Running stage 'validate'" in third.stdout and "Running stage 'ingest'" not in third.stdout
