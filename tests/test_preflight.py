"""A pipeline run alone on a fresh clone either runs or says, in one line and within seconds, what to run first."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT, run_cli, smoke_project

# Pipelines that need nothing an earlier pipeline makes: on a fresh clone they simply run.
SOURCES = {"synthesize_views", "ingest", "__default__"}


def _registered() -> list[str]:
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(PROJECT_ROOT)
    return sorted(pipelines)


REGISTERED = _registered()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh clone: code, configuration, dvc.yaml and MLproject; no data, no MLflow store."""
    dst = smoke_project(tmp_path_factory.mktemp("fresh") / "project")
    for item in ("dvc.yaml", "MLproject", "scripts"):
        src = PROJECT_ROOT / item
        subprocess.run(["cp", "-r", str(src), str(dst / item)], check=True)
    return dst


def _run_in_process(project, name: str, capsys) -> tuple[int, str]:
    """`kedro run --env=smoke --pipelines=<name>` in this process (the CLI's session, hooks included)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    code = 0
    try:
        with KedroSession.create(project_path=project, env="smoke") as session:
            session.run(pipeline_names=[name])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n in REGISTERED if n not in SOURCES])
def test_a_pipeline_run_alone_names_what_is_missing_and_how_to_make_it(fresh, name, capsys, monkeypatch):
    monkeypatch.chdir(fresh)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{fresh / 'mlflow.db'}")
    code, err = _run_in_process(fresh, name, capsys)
    lines = [line for line in err.splitlines() if "cannot start" in line]
    assert code == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"{name} cannot start: missing ")
    assert "kedro run --env=smoke --pipelines=" in lines[0]
    assert "Traceback" not in err


def test_the_plan_lists_every_upstream_pipeline_in_data_flow_order(fresh, capsys, monkeypatch):
    monkeypatch.chdir(fresh)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{fresh / 'mlflow.db'}")
    _, err = _run_in_process(fresh, "train_stage3", capsys)
    line = next(line for line in err.splitlines() if "cannot start" in line)
    plan = re.search(r"--pipelines=(\S+?);", line).group(1).split(",")
    assert plan == ["synthesize_views", "ingest", "validate", "pseudo_label", "preprocess", "pretrain_generator",
                    "train_stage1", "train_stage2"]
    assert "training_pairs (made by preprocess)" in line
    assert "model models:/dimo@stage2 (not in the registry at " in line and "; made by train_stage2)" in line
    assert "KEDRO_ENV=smoke dvc repro train_stage3" in line


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["kedro", "run", "--env=smoke", "--pipelines=train_stage3"],
    ["mlflow", "run", ".", "-e", "train_stage3", "--env-manager", "local", "-P", "env=smoke"],
])
def test_the_user_commands_fail_fast_with_one_line(fresh, command):
    before = sorted(p.relative_to(fresh) for p in (fresh / "data").rglob("*"))
    out = run_cli(command, cwd=fresh, env={"MLFLOW_TRACKING_URI": f"sqlite:///{fresh / 'mlflow.db'}"}, timeout=120)
    text = out.stdout + out.stderr
    lines = [line for line in text.splitlines() if "cannot start" in line]
    assert out.returncode != 0, text[-2000:]
    assert len(lines) == 1 and "train_stage3 cannot start: missing" in lines[0], text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    # failing fast: refused before any node ran, so nothing was trained or written
    assert "Running node" not in text, text[-2000:]
    assert sorted(p.relative_to(fresh) for p in (fresh / "data").rglob("*")) == before


def test_dvc_builds_what_is_upstream_of_stage3(fresh):
    """`dvc repro train_stage3` on a fresh clone runs every stage it needs, in order (the DAG DVC follows;
    the real run is timed in the issue note)."""
    assert run_cli(["dvc", "init", "-q", "-f"], cwd=fresh).returncode == 0
    out = run_cli(["dvc", "dag", "--dot", "train_stage3"], cwd=fresh)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    stages = re.findall(r'^"([^"]+)";$', out.stdout, flags=re.M)
    edges = set(re.findall(r'^"([^"]+)" -> "([^"]+)";$', out.stdout, flags=re.M))
    assert stages == ["dvc_params",  # the environment's parameters first (src/dimo/dvc_params.py)
                      "synthesize_views", "ingest", "validate", "pseudo_label", "preprocess", "pretrain_generator",
                      "train_stage1", "train_stage2", "train_stage3"]
    chain = [("preprocess", "pretrain_generator"), ("pretrain_generator", "train_stage1"),
             ("train_stage1", "train_stage2"), ("train_stage2", "train_stage3")]
    assert set(chain) <= edges


def test_a_registered_start_of_another_variant_is_named(tmp_path, monkeypatch):
    """The registry check: a missing alias, and an alias whose version was trained as another variant."""
    import mlflow

    from dimo import preflight

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    client.create_registered_model("dimo")
    (tmp_path / "weights").mkdir()
    version = client.create_model_version("dimo", str(tmp_path / "weights"),
                                          tags={"config": "tiny", "variant": "channel_concat"}).version
    client.set_registered_model_alias("dimo", "stage1", version)
    params = {"training": {"model": {"config": "tiny", "variant": "full"}}}
    what, why = preflight.model_problem("models:/dimo@stage1", params)
    assert what == "model models:/dimo@stage1"
    assert why == "a 'tiny' model of variant 'channel_concat', but training.model asks for 'tiny' variant 'full'"
    assert preflight.model_problem("models:/dimo@stage2", params)[1].startswith("not in the registry at sqlite://")
    params["training"]["model"]["variant"] = "channel_concat"
    assert preflight.model_problem("models:/dimo@stage1", params) is None
    params["training"]["model"].update(variant="full", transfer_from_other_variant=True)  # ablations start so
    assert preflight.model_problem("models:/dimo@stage1", params) is None
    what, why = preflight.model_problem(f"wan:{tmp_path / 'no-wan'}", params)
    assert what == f"Wan folder {tmp_path / 'no-wan'}" and why.startswith("no such folder")
