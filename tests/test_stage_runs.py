"""`tracking.nested_stage_runs: true` (the default): a `kedro run` is one parent MLflow run with a nested run per
pipeline stage, holding that stage's params, stepped metrics, artifacts (with their previews) and registered
version; the version links back to it, and it to its parent's git commit. Runs train_stage3 (2 steps) on a copy of
the smoke chain."""

from __future__ import annotations

import shutil

import mlflow
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_a_stage_is_a_nested_run_linked_to_its_model_version_and_parent_commit(smoke_chain, tmp_path):
    project = shutil.copytree(smoke_chain, tmp_path / "project", symlinks=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    before = {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    out = run_cli(["kedro", "run", "--env=smoke", "--pipelines=train_stage3"], cwd=project, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    new = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
           if r.info.run_id not in before]
    parents = [r for r in new if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in new if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and [c.info.run_name for c in children] == ["train_stage3"], [r.info for r in new]
    parent, child = parents[0], children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == parent.info.status == "FINISHED"
    assert child.data.tags["dimo.parent_git_commit"] == parent.data.tags["git_commit"]
    # the stage's own params, stepped metrics and artifacts are in its run, not in the parent's
    assert child.data.params["training.seed"] == "0"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "stage3.loss")]
    assert len(steps) == 2 and steps == sorted(steps)
    assert "stage3.loss" not in parent.data.metrics
    samples = {f.path for f in client.list_artifacts(child.info.run_id, "samples/stage3")}
    assert any(p.endswith(".preview.gif") for p in samples), samples
    # the registered version and its run point at each other
    version = client.get_model_version_by_alias("dimo", "stage3")
    assert version.run_id == child.info.run_id
    assert child.data.tags["dimo.registered_model"] == f"dimo/{version.version}"
