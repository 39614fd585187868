"""State that survives machines, through DVC: stage models handed over as DVC outputs (a fresh clone pulls them and
evaluates without the MLflow store that registered them), DVC parameters per environment (dvc_params.yaml), and a
lock that cannot drift from the code and parameters.

One DVC project is built per module from the session's smoke chain (its data, this checkout's files): the chain's
outputs are recorded with `dvc commit` (no stage runs again) and pushed to a local-folder remote.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dimo import dvc_params
from dimo.training import handover
from tests.conftest import PROJECT_ROOT, run_cli

SMOKE = {"KEDRO_ENV": "smoke"}


def _ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def locked_stages() -> list[str]:
    """The stages dvc.lock must cover: the default chain (its pipelines are DVC stages, tests/test_project.py)."""
    from dimo.pipeline_registry import DEFAULT_CHAIN

    return list(DEFAULT_CHAIN)


def lock_drift(repo: Path, stages: list[str], env: dict | None = None) -> list[str]:
    """How `stages`' code, configuration or parameters differ from dvc.lock, by `dvc status` (nothing runs). Data
    dependencies and outputs are left out: a checkout without the data has none."""
    status = json.loads(_ok(run_cli(["dvc", "status", "--json", *stages], cwd=repo, env=env)) or "{}")
    drift = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                continue
            for path, how in change.get("changed deps", {}).items():
                if isinstance(how, dict):  # a params file: {key: modified | new | deleted}
                    how = ", ".join(f"{key} {what}" for key, what in sorted(how.items()))
                if not path.startswith("data/"):
                    drift.append(f"{stage}: {path} {how}")
    return sorted(drift)


def _committed_project(dst: Path) -> Path:
    """This checkout's files (tracked, and new ones git does not ignore) in a fresh git repository."""
    files = _git(PROJECT_ROOT, "ls-files", "-co", "--exclude-standard").splitlines()
    for rel in files:
        if (PROJECT_ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / rel, dst / rel)
    _git(dst, "init", "-q")
    _git(dst, "config", "user.email", "test@example.com")
    _git(dst, "config", "user.name", "test")
    return dst


def _link_weights(project: Path) -> None:
    """The metric weights the setup converted, as on every machine of the team (not DVC data)."""
    weights = PROJECT_ROOT / ".cache" / "weights"
    if weights.is_dir():
        (project / ".cache").mkdir(exist_ok=True)
        (project / ".cache" / "weights").symlink_to(weights)


@pytest.fixture(scope="module")
def origin(smoke_chain, tmp_path_factory) -> Path:
    """A team's repository after the smoke chain: dvc.lock committed, the data pushed to a local remote."""
    root = tmp_path_factory.mktemp("dvc_state")
    repo = _committed_project(root / "origin")
    shutil.copytree(smoke_chain / "data", repo / "data", symlinks=True, dirs_exist_ok=True)
    _link_weights(repo)
    _ok(run_cli(["dvc", "remote", "add", "-d", "-f", "localstore", str(root / "remote")], cwd=repo))
    _ok(run_cli(["python", "src/dimo/dvc_params.py"], cwd=repo, env=SMOKE))
    _ok(run_cli(["dvc", "commit", "-f", "--with-deps", *locked_stages()], cwd=repo, env=SMOKE))  # not all feed evaluate
    _ok(run_cli(["dvc", "push"], cwd=repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "smoke chain")
    return repo


def _clone(origin: Path, dst: Path) -> Path:
    _git(origin.parent, "clone", "-q", str(origin), str(dst))
    _link_weights(dst)
    return dst


@pytest.mark.slow
def test_a_fresh_clone_pulls_the_stage_models_and_evaluates_without_the_mlflow_store(origin, smoke_chain,
                                                                                     tmp_path):
    lock = yaml.safe_load((origin / "dvc.lock").read_text())["stages"]
    stage3 = next(o for o in lock["train_stage3"]["outs"] if o["path"] == "data/06_models/stage3")
    assert handover.dvc_md5(origin / "data/06_models/stage3") == stage3["md5"]  # the tag is DVC's own hash
    import mlflow

    store = f"sqlite:///{smoke_chain / 'mlflow.db'}"
    version = mlflow.MlflowClient(store, store).get_model_version_by_alias("dimo", "stage3")
    assert version.tags[handover.DVC_MD5_TAG] == stage3["md5"]  # the registry points at the DVC output

    clone = _clone(origin, tmp_path / "clone")
    assert not (clone / "mlflow.db").exists() and not (clone / "data/06_models/stage2").exists()
    _ok(run_cli(["dvc", "pull", "--with-deps", "train_stage3"], cwd=clone))
    env = {**SMOKE, "MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlflow.db'}"}
    out = _ok(run_cli(["dvc", "repro", "evaluate"], cwd=clone, env=env, timeout=900))
    assert set(re.findall(r"Running stage '(\w+)'", out)) == {"dvc_params", "evaluate"}, out[-3000:]
    assert "Stage 'train_stage3' didn't change" in out  # nothing retrained

    table = "data/08_reporting/evaluate/benchmark_table.csv"
    pd.testing.assert_frame_equal(pd.read_csv(clone / table), pd.read_csv(origin / table))
    generation = json.loads((clone / "data/07_model_output/evaluate/generation.json").read_text())
    assert generation["model_version"] is None  # scored from the folder: this clone's registry is empty
    assert (clone / generation["loaded_from"]).resolve() == (clone / ".cache/handover/stage3").resolve()


@pytest.mark.slow
def test_dvc_reads_the_kedro_env_parameters_and_a_smoke_change_reaches_only_its_stage(origin, tmp_path):
    clone = _clone(origin, tmp_path / "clone")  # no data pulled: `dvc status` compares code and parameters
    assert lock_drift(clone, locked_stages(), SMOKE) == []
    smoke = clone / "conf/smoke/parameters_evaluate.yml"  # a smoke parameter that only evaluate reads
    smoke.write_text(smoke.read_text().replace("num_steps: 2", "num_steps: 3"))
    base = clone / "conf/base/parameters_evaluate.yml"    # a base value that smoke overrides: reaches no stage
    base.write_text(base.read_text().replace("num_steps: 8", "num_steps: 9"))
    _ok(run_cli(["python", "src/dimo/dvc_params.py"], cwd=clone, env=SMOKE))  # what `dvc repro` runs first
    assert "num_steps: 3" in (clone / "dvc_params.yaml").read_text()
    assert lock_drift(clone, locked_stages(), SMOKE) == ["evaluate: dvc_params.yaml evaluate modified"]


@pytest.mark.slow
def test_the_lock_check_bites_on_code_and_parameters(origin, tmp_path):
    clone = _clone(origin, tmp_path / "clone")  # no data pulled: the check reads code and parameters only
    assert lock_drift(clone, locked_stages(), SMOKE) == []
    nodes = clone / "src/dimo/pipelines/evaluate/nodes.py"
    nodes.write_text(nodes.read_text() + "\n# a change\n")
    params = clone / "conf/smoke/parameters_training.yml"
    params.write_text(params.read_text().replace("lr: 1.0e-3", "lr: 2.0e-3", 1))
    _ok(run_cli(["python", "src/dimo/dvc_params.py"], cwd=clone, env=SMOKE))
    drift = lock_drift(clone, locked_stages(), SMOKE)
    assert "evaluate: src/dimo/pipelines/evaluate modified" in drift
    assert any(d.startswith("train_stage1: dvc_params.yaml") for d in drift), drift


def test_the_committed_dvc_params_file_is_the_default_environments():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # conf/ as a fresh clone has it: no local overrides
        shutil.copytree(PROJECT_ROOT / "conf", Path(tmp) / "conf", ignore=shutil.ignore_patterns("local"))
        (Path(tmp) / "conf" / "local").mkdir()
        expected = dvc_params.render(Path(tmp) / "conf")
    assert (PROJECT_ROOT / dvc_params.OUT).read_text() == expected, \
        "dvc_params.yaml is stale: run `python src/dimo/dvc_params.py` and commit it"


def test_the_committed_lock_matches_the_code_and_parameters():
    assert lock_drift(PROJECT_ROOT, [*locked_stages(), "annealing_sweep"]) == []
