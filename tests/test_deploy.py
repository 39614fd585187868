"""The deploy files, checked by their own ecosystems' tools: hadolint (Dockerfile), actionlint with shellcheck
(workflows), shellcheck (deploy scripts), docker-py's .dockerignore matcher; and every command the workflows and the
image run exists in the project (scripts, DVC stages, configuration environments)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, VENV_BIN

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
# a project file a shell line runs or sources: `bash x.sh`, `source x.sh`, `python x.py`, or a path in the tree
FILE_REF = re.compile(r"(?<![\w./-])((?:scripts|deploy|\.ci|benchmarks|tests)/[\w./-]+\.(?:sh|py|txt|yaml)"
                      r"|\.ci/run)\b")


def tool(name: str) -> str:
    path = shutil.which(name, path=str(VENV_BIN))
    assert path, f"{name} is not installed in .venv: run `bash scripts/setup.sh` (pyproject.toml's dev extra)"
    return path


def run_tool(args: list[str], cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([tool(args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=120)


def load_workflow(name: str) -> dict:
    spec = yaml.safe_load((WORKFLOWS / name).read_text())
    spec["on"] = spec.pop(True, spec.get("on"))  # YAML 1.1 reads the key `on` as True
    return spec


def dvc_stages() -> set[str]:
    return set(yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"])


def missing_files(text: str) -> list[str]:
    return [ref for ref in FILE_REF.findall(text) if not (PROJECT_ROOT / ref).is_file()]


# ------------------------------------------------------------------ the container image


def test_hadolint_passes_the_dockerfile_and_fails_a_root_one(tmp_path):
    out = run_tool(["hadolint", "Dockerfile"])
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text((PROJECT_ROOT / "Dockerfile").read_text() + "USER root\nRUN apt-get install curl\n")
    out = run_tool(["hadolint", str(broken)])
    assert out.returncode != 0 and "DL3002" in out.stdout  # the linter is live: last USER root is refused


def test_dockerfile_pins_torch_as_pyproject_and_runs_kedro_as_a_non_root_user():
    import tomllib

    text = (PROJECT_ROOT / "Dockerfile").read_text()
    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch=="))
    installed = re.findall(r'pip install --index-url "\$\{TORCH_INDEX\}" (torch\S*)', text)
    assert installed == [torch_pin], installed  # the one torch install line, CUDA or CPU by TORCH_INDEX
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:[\d.]+-runtime-", text, re.M), "not a CUDA runtime base"
    assert "bash scripts/setup.sh" in text  # the same Debian packages and pins as a workstation
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    script = PROJECT_ROOT / entry[-1].removeprefix("/opt/dimo/")
    assert script.is_file() and 'exec kedro run "$@"' in script.read_text()
    assert missing_files(text) == []


def test_dockerignore_keeps_data_stores_and_venvs_out(tmp_path):
    from docker.utils.build import exclude_paths

    kept = ["Dockerfile", "pyproject.toml", "src/dimo/a.py", "conf/base/globals.yml", "conf/local/.gitkeep",
            "scripts/setup.sh", "dvc.yaml", ".dvc/config"]
    dropped = [".venv/bin/python", ".cache/anny/x", "data/03_primary/clip_table.parquet", "data/01_raw/videos/a.mp4",
               "mlruns/0/meta.yaml", "mlflow.db", "dvc-remote/ab/cd", ".git/HEAD", "conf/local/credentials.yml",
               "src/dimo/__pycache__/a.pyc", ".dvc/cache/files/x", "sweep.optuna.db"]
    for rel in kept + dropped:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    patterns = [line for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    context = exclude_paths(str(tmp_path), patterns)
    assert set(kept) <= context, sorted(set(kept) - context)
    assert not set(dropped) & context, sorted(set(dropped) & context)


# ------------------------------------------------------------------ the workflows


def test_actionlint_passes_the_workflows_and_fails_a_broken_one(tmp_path):
    out = run_tool(["actionlint", "-shellcheck", tool("shellcheck")])
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / ".github" / "workflows"
    broken.mkdir(parents=True)
    (broken / "x.yml").write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
                                  "      - run: echo ${{ github.event.issue.title }} $undefined_var\n")
    out = run_tool(["actionlint", "-shellcheck", tool("shellcheck"), str(broken / "x.yml")], cwd=tmp_path)
    assert out.returncode != 0  # the linter is live (script injection, unquoted variable)


def test_ci_runs_the_readmes_test_command_on_every_push():
    ci = load_workflow("ci.yml")
    assert "push" in ci["on"]
    runs = [s.get("run", "") for job in ci["jobs"].values() for s in job["steps"]]
    assert "bash scripts/test.sh" in (PROJECT_ROOT / "README.md").read_text()
    assert any(r.strip() == "bash scripts/test.sh" for r in runs)


def test_train_workflow_runs_only_what_the_project_has():
    train = load_workflow("train.yml")
    inputs = train["on"]["workflow_dispatch"]["inputs"]
    # every stage, and nothing dvc.yaml lacks; dvc_params is no choice: it runs first in every repro (always changed)
    assert set(inputs["stage"]["options"]) == dvc_stages() - {"dvc_params"}
    assert inputs["stage"]["default"] in dvc_stages()
    envs = {p.name for p in (PROJECT_ROOT / "conf").iterdir() if p.is_dir()} - {"deepspeed"}
    assert set(inputs["environment"]["options"]) <= envs | {"base"}
    (job,) = train["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "gpu"]
    assert job["env"]["STAGE"] == "${{ inputs.stage }}"
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    for command in ("dvc pull", 'dvc repro "$STAGE"', "dvc push", "deploy/ci/job_summary.py", "GITHUB_STEP_SUMMARY"):
        assert command in runs
    assert missing_files(runs) == []
    for script in re.findall(r"(deploy/\S+\.sh)", runs):  # and what those scripts call in turn
        assert missing_files((PROJECT_ROOT / script).read_text()) == [], script


def test_train_workflow_takes_credentials_only_from_secrets():
    text = (WORKFLOWS / "train.yml").read_text()
    for key, value in load_workflow("train.yml")["jobs"]["train"]["env"].items():
        if re.search(r"URI|PASSWORD|USERNAME|SECRET|KEY_ID|REMOTE_URL", key):
            assert value.startswith("${{ secrets."), f"{key} is not read from a secret: {value}"
    assert not re.search(r"https?://(?!download\.pytorch)", text)  # no server address in the file


def test_deploy_scripts_pass_shellcheck():
    scripts = sorted(str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "deploy").rglob("*.sh"))
    out = run_tool(["shellcheck", "-x", "-s", "bash", *scripts])
    assert out.returncode == 0, out.stdout


# ------------------------------------------------------------------ the job summary


def _summary_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("job_summary", PROJECT_ROOT / "deploy/ci/job_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_summary_tables_a_stages_metrics(tmp_path):
    summary = _summary_module()
    shutil.copy(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "data/06_models").mkdir(parents=True)
    (tmp_path / "data/06_models/stage2_summary.json").write_text(
        json.dumps({"stage": "stage2", "steps": 15000, "final": {"loss": 0.123456, "geometric_weight": 0.0},
                    "losses": [1, 2, 3]}))
    text = summary.summary("train_stage2", tmp_path)
    assert "| steps | 15000 |" in text and "| final.loss | 0.1235 |" in text
    assert "losses" not in text  # lists are left out
    (tmp_path / "data/06_models/stage2_summary.json").unlink()  # a failed job: listed, not fatal
    assert "- `data/06_models/stage2_summary.json`: not written" in summary.summary("train_stage2", tmp_path)
    with pytest.raises(KeyError, match="dvc.yaml has no stage 'train_stage9'"):
        summary.summary("train_stage9", tmp_path)
