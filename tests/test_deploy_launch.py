"""Multi-node DeepSpeed launch and the MLproject entry points, for real on the smoke chain (slow): two "nodes" on
loopback (127.0.0.1 and 127.0.0.2) each running deploy/skypilot/launch.sh as SkyPilot would, and
`mlflow run . -e validate --env-manager local -P env=smoke`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import mlflow
import pytest

from tests.conftest import PROJECT_ROOT, VENV_BIN, run_cli, smoke_project

pytestmark = pytest.mark.slow


def _with_deploy_files(project: Path) -> Path:
    """The smoke chain's copy holds code and configuration only; the launch needs scripts/ and deploy/ too."""
    for item in ("scripts", "deploy"):
        if not (project / item).exists():
            shutil.copytree(PROJECT_ROOT / item, project / item)
    if not (project / "MLproject").exists():
        shutil.copy(PROJECT_ROOT / "MLproject", project / "MLproject")
    return project


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_train_a_stage_with_the_skypilot_launch_script(smoke_chain, tmp_path):
    # a copy: the launch trains and registers stage2, which must not change the session's chain for other tests
    project = _with_deploy_files(Path(shutil.copytree(smoke_chain, tmp_path / "project", symlinks=True)))
    base_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "KEDRO_ENV": "smoke",
                "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.2", "SKYPILOT_NUM_NODES": "2",
                "SKYPILOT_NUM_GPUS_PER_NODE": "1", "MASTER_PORT": str(_free_port())}
    nodes = []
    for rank in (0, 1):
        env = {**base_env, "SKYPILOT_NODE_RANK": str(rank), "DIMO_HOSTFILE": str(tmp_path / f"hostfile{rank}")}
        log = open(tmp_path / f"node{rank}.log", "w")  # closed below
        nodes.append((subprocess.Popen(["bash", "deploy/skypilot/launch.sh", "train_stage2"], cwd=project, env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in nodes:
        try:
            codes.append(proc.wait(timeout=900))
        finally:
            proc.kill() if proc.poll() is None else None
            log.close()
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + "\n----\n" + logs[1][-3000:]
    assert (tmp_path / "hostfile1").read_text() == "127.0.0.1 slots=1\n127.0.0.2 slots=1\n"
    assert "node 1 of 2: train_stage2 (stage2)" in logs[1]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run = client.get_run(client.get_model_version_by_alias("dimo", "stage2").run_id)
    assert run.data.params["world_size"] == "2"  # one rank per "node", one registration (rank 0)
    assert run.info.start_time > os.path.getmtime(tmp_path / "hostfile0") * 1000 - 5000


def test_mlflow_run_of_the_validate_entry_point(smoke_chain, tmp_path):
    project = _with_deploy_files(smoke_project(tmp_path / "project"))
    for folder in ("data/01_raw/synthetic", "data/02_intermediate/ingested"):  # validate's inputs, from the chain
        shutil.copytree(smoke_chain / folder, project / folder)
    for folder in ("data/03_primary", "data/08_reporting"):
        (project / folder).mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True, capture_output=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke"], cwd=project,
                   check=True, capture_output=True)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    out = run_cli(["mlflow", "run", ".", "-e", "validate", "--env-manager", "local", "-P", "env=smoke"],
                  cwd=project, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "dimo"}, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (project / "data/03_primary/clip_table.parquet").is_file()
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("dimo").experiment_id],
                              "tags.`mlflow.project.entryPoint` = 'validate'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert any(k.startswith("validate") for k in runs[0].data.params), runs[0].data.params  # kedro-mlflow's
