"""deploy/skypilot/train.yaml through SkyPilot's own loader and schema (`sky.Task.from_yaml_config`, no cloud
account; the loader lives beside the venv, deploy/skypilot/install_loader.sh), and the hostfile it builds, read by
DeepSpeed's own hostfile parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

LOADER = PROJECT_ROOT / ".cache" / "skypilot-loader"
TASK = PROJECT_ROOT / "deploy" / "skypilot" / "train.yaml"
REQUIRED = {"DIMO_BUCKET": "team-bucket", "DVC_REMOTE_URL": "s3://team-bucket/dvc"}
SECRETS = {"MLFLOW_TRACKING_URI": "https://mlflow.invalid", "MLFLOW_TRACKING_USERNAME": "u",
           "MLFLOW_TRACKING_PASSWORD": "p"}

LOAD = """
import json, sys
import sky
from sky.utils import yaml_utils
config = yaml_utils.read_yaml(sys.argv[1])
config.update(json.loads(sys.argv[2]))
task = sky.Task.from_yaml_config(config, env_overrides=list(json.loads(sys.argv[3]).items()),
                                 secrets_overrides=list(json.loads(sys.argv[4]).items()))
(res,) = task.resources
print(json.dumps({"num_nodes": task.num_nodes, "accelerators": res.accelerators, "use_spot": res.use_spot,
                  "job_recovery": res.job_recovery, "envs": task.envs, "secrets": sorted(task.secrets),
                  "mounts": {k: [v.name, str(v.mode)] for k, v in task.storage_mounts.items()},
                  "setup": task.setup, "run": task.run}))
"""


def load_task(tmp_path, extra: dict | None = None, envs: dict | None = None) -> subprocess.CompletedProcess:
    assert (LOADER / "sky").is_dir(), f"{LOADER} is missing: run `bash deploy/skypilot/install_loader.sh`"
    env = {**os.environ, "PYTHONPATH": str(LOADER), "HOME": str(tmp_path)}  # sky writes ~/.sky
    return subprocess.run([sys.executable, "-c", LOAD, str(TASK), json.dumps(extra or {}),
                           json.dumps(REQUIRED if envs is None else envs), json.dumps(SECRETS)],
                          env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = load_task(tmp_path_factory.mktemp("sky"))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_skypilot_loads_the_task_with_its_resources_and_recovery(task):
    assert task["num_nodes"] >= 2 and task["accelerators"] == {"H100": 8}
    assert task["use_spot"] is True
    assert task["job_recovery"]["strategy"] in ("EAGER_NEXT_REGION", "FAILOVER")
    assert task["mounts"] == {"/dimo-state": ["team-bucket", "StorageMode.MOUNT_CACHED"]}
    assert set(task["secrets"]) == set(SECRETS)  # credentials are secrets, not envs
    assert not set(SECRETS) & set(task["envs"])


def test_the_run_command_launches_a_training_stage_with_checkpoints_on_the_bucket(task):
    from dimo.training.stages import STAGES

    assert task["envs"]["DIMO_STAGE"] in {s.pipeline for s in STAGES}
    assert task["envs"]["KEDRO_ENV"] == task["envs"]["DIMO_ENV"]
    assert (PROJECT_ROOT / "conf" / task["envs"]["KEDRO_ENV"]).is_dir()
    run = task["run"]
    assert 'bash deploy/skypilot/launch.sh "$DIMO_STAGE"' in run
    assert 'DIMO_CHECKPOINT_DIR="/dimo-state/checkpoints/' in run  # resume state survives the nodes
    assert 'dvc pull --with-deps "$DIMO_STAGE"' in run and 'dvc push "$DIMO_STAGE"' in run
    for script in ("deploy/skypilot/launch.sh", "deploy/prepare_node.sh", "deploy/node_env.sh"):
        assert script in run and (PROJECT_ROOT / script).is_file()
    assert "bash scripts/setup.sh" in task["setup"]
    launch = (PROJECT_ROOT / "deploy/skypilot/launch.sh").read_text()
    for flag in ("--no_ssh", "--node_rank", "--hostfile", "--num_nodes", "--num_gpus", "--master_addr",
                 "--module dimo.training.launch"):
        assert flag in launch


def test_skypilot_refuses_a_missing_bucket_and_an_unknown_field(tmp_path):
    out = load_task(tmp_path, envs={"DVC_REMOTE_URL": "s3://b/dvc"})
    assert out.returncode != 0 and "DIMO_BUCKET" in out.stderr
    out = load_task(tmp_path, extra={"resourcez": {"accelerators": "H100:8"}})
    assert out.returncode != 0 and "resourcez" in out.stderr  # the schema is checked, not just the YAML


def test_hostfile_from_skypilots_node_list_reads_in_deepspeed(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile

    env = {**os.environ, "SKYPILOT_NODE_IPS": "10.0.0.4\n10.0.0.7\n", "SKYPILOT_NUM_GPUS_PER_NODE": "8"}
    out = subprocess.run(["bash", "deploy/skypilot/hostfile.sh"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                         text=True, check=True)
    (tmp_path / "hostfile").write_text(out.stdout)
    assert dict(fetch_hostfile(str(tmp_path / "hostfile"))) == {"10.0.0.4": 8, "10.0.0.7": 8}
    env.pop("SKYPILOT_NODE_IPS")
    out = subprocess.run(["bash", "deploy/skypilot/hostfile.sh"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                         text=True)
    assert out.returncode != 0 and "SKYPILOT_NODE_IPS is not set" in out.stderr


def test_the_task_file_is_plain_yaml_without_secrets():
    spec = yaml.safe_load(TASK.read_text())
    assert all(value is None for value in spec["secrets"].values())
