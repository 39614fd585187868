"""A shared tracking server: real PostgreSQL + `mlflow server` (scripts/mlflow_server.sh), the smoke training chain
against it through MLFLOW_TRACKING_URI, `models:/dimo@champion` loaded back with no pickle, and what a run does
when the server is unreachable at start (exit 2) or dies mid-run (exit 3, checkpoints kept)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from dimo import inference, tracking
from tests.conftest import VENV_BIN, run_cli
from tests.tracking_server import TrackingServer, free_port, pickle_audit

CHAIN = "pretrain_generator,train_stage1,train_stage2,train_stage3,evaluate"


def _fresh_store_copy(smoke_chain: Path, dst: Path) -> Path:
    """The session's smoke project (data, codec, pairs) without its MLflow store, registry cache or checkpoints."""
    project = Path(shutil.copytree(smoke_chain, dst, symlinks=True))
    for stale in ("mlflow.db", "mlruns", ".cache/registry", "data/06_models/checkpoints"):
        path = project / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return project


@pytest.fixture(scope="module")
def server():
    srv = TrackingServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def chain_on_server(server, smoke_chain, tmp_path_factory):
    """The smoke training chain (pretrain -> stage 1..3 -> evaluate) with MLFLOW_TRACKING_URI at the server: each
    stage starts from the previous stage's model, downloaded from the server's registry."""
    project = _fresh_store_copy(smoke_chain, tmp_path_factory.mktemp("on_server") / "project")
    out = run_cli(["kedro", "run", "--env=smoke", f"--pipelines={CHAIN}",
                   "--params=evaluate.pose=false,evaluate.max_pairs=1"], cwd=project,  # the gate needs no pose
                  env={"MLFLOW_TRACKING_URI": server.uri}, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:] + server.log()[-2000:]
    return project


def test_the_uri_comes_from_the_environment_and_unreachable_servers_are_named(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri() == "http://127.0.0.1:1"
    assert tracking.unreachable("sqlite:///mlflow.db") is None
    assert "refused" in tracking.unreachable(f"http://127.0.0.1:{free_port()}").lower()

    previous = mlflow.get_tracking_uri()
    try:
        dead = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(inference.InferenceError, match=rf"^{dead}: the MLflow tracking server is unreachable"):
            inference.load("models:/dimo@champion", device="cpu", tracking_uri=dead)
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_the_smoke_chain_tracks_registers_and_serves_champion_through_the_server(server, chain_on_server):
    assert not (chain_on_server / "mlflow.db").exists()  # nothing went to the local sqlite store
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    aliases = client.get_registered_model("dimo").aliases
    assert {"base", "stage1", "stage2", "stage3", "champion"} <= set(aliases), aliases
    assert aliases["champion"] == aliases["stage3"]
    stage2 = client.get_model_version("dimo", aliases["stage2"])
    run = client.get_run(stage2.run_id)
    assert any(k.startswith("stage2.") for k in run.data.metrics), run.data.metrics.keys()
    assert list((server.dir / "artifacts").rglob("*.safetensors"))  # the artifact root holds the weights

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.uri)
    try:
        with pickle_audit() as seen:
            model = mlflow.pyfunc.load_model("models:/dimo@champion")
        assert seen == [], seen[:5]
        assert model.metadata.run_id == client.get_model_version("dimo", aliases["champion"]).run_id
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_an_unreachable_server_stops_the_run_before_it_trains(chain_on_server, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    out = run_cli(["kedro", "run", "--env=smoke", "--pipelines=train_stage1",
                   f"--params=training.checkpoint_dir={tmp_path / 'checkpoints'}"], cwd=chain_on_server,
                  env={"MLFLOW_TRACKING_URI": dead}, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [x for x in out.stderr.splitlines() if "tracking server" in x]
    assert len(lines) == 1 and dead in lines[0] and "unreachable" in lines[0], out.stderr[-3000:]
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


@pytest.mark.slow
def test_a_server_lost_mid_run_fails_with_one_line_keeps_the_checkpoints_and_resumes(server, chain_on_server,
                                                                                     tmp_path):
    """Runs last in this module: it kills the server, then starts it again on the same database and artifacts."""
    ckpt = tmp_path / "checkpoints"
    args = [str(VENV_BIN / "kedro"), "run", "--env=smoke", "--pipelines=train_stage1",
            f"--params=training.checkpoint_dir={ckpt},training.stages.stage1.steps=12"]
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": server.uri}
    fast_fail = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # not minutes
    before = mlflow.MlflowClient(tracking_uri=server.uri).get_model_version_by_alias("dimo", "stage1").version
    proc = subprocess.Popen(args, cwd=chain_on_server, text=True, env={**env, **fast_fail},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not (ckpt / "stage1" / "latest").is_file():  # the first complete checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGSTOP)  # training holds still while the server goes: no race with its last step
        server.kill()
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.start()  # the same PostgreSQL database and artifacts
    assert proc.returncode == 3, stderr[-3000:]
    lines = [x for x in stderr.splitlines() if "tracking server" in x]
    assert len(lines) == 1 and "mid-run" in lines[0] and server.uri in lines[0], stderr[-3000:]
    tag = (ckpt / "stage1" / "latest").read_text().strip()
    assert (ckpt / "stage1" / tag).is_dir() and any((ckpt / "stage1" / tag).iterdir())

    again = subprocess.run(args, cwd=chain_on_server, text=True, env=env, capture_output=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((chain_on_server / "data/06_models/stage1_summary.json").read_text())
    assert summary["resumed_at"] == int(tag.removeprefix("step-")) > 0  # from the kept checkpoint, not step 0
    after = mlflow.MlflowClient(tracking_uri=server.uri).get_model_version_by_alias("dimo", "stage1").version
    assert int(after) > int(before)  # registered on the restarted server
