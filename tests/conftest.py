"""Shared fixtures: small real videos made on the fly, and a throwaway copy of the Kedro project."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"

# The same offline / cache settings as scripts/env.sh, for a plain `pytest` call too.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", str(PROJECT_ROOT / ".cache" / "matplotlib"))
os.environ.setdefault("ANNY_CACHE_DIR", str(PROJECT_ROOT / ".cache" / "anny"))
os.environ.setdefault("WARP_CACHE_PATH", str(PROJECT_ROOT / ".cache" / "warp"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT_ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# Every test picks its own throwaway store: a user's server (MLFLOW_TRACKING_URI, kept by scripts/env.sh) gets no
# test runs, and kedro runs in project copies use their own sqlite:///mlflow.db (conf/base/mlflow.yml's default).
os.environ.pop("MLFLOW_TRACKING_URI", None)


def moving_frames(n: int, height: int = 72, width: int = 96, seed: int = 0, kind: str = "moving") -> np.ndarray:
    """A textured square moving over a gradient: decodable, not blank, not frozen (unless asked)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                     np.full_like(xx, 90)], -1).astype(np.uint8)
    texture = rng.integers(0, 255, (height // 3, width // 4, 3), dtype=np.uint8)
    frames = []
    for t in range(n):
        f = base.copy()
        if kind == "blank":
            f[:] = 0
        else:
            x = (t * 3) % (width - texture.shape[1]) if kind == "moving" else 5
            f[height // 3: height // 3 + texture.shape[0], x: x + texture.shape[1]] = texture
        frames.append(f)
    return np.stack(frames)


@pytest.fixture
def write_clip():
    from dimo import video_io

    def write(path: Path, n: int = 40, fps: float = 16.0, kind: str = "moving", seed: int = 0, **kw) -> Path:
        return video_io.write_video(path, moving_frames(n, seed=seed, kind=kind, **kw), fps)

    return write


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a project command (kedro, dvc, mlflow) from the venv, in `cwd`."""
    # MLFLOW_TRACKING_URI only when the test names it: mlflow.set_tracking_uri (tests call it to read a project's
    # store) also exports it, and a kedro run would then log to that other project's store
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env = {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    exe = shutil.which(args[0], path=full_env["PATH"])
    return subprocess.run([exe, *args[1:]], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def tiny_champion_store(root: Path):
    """An MLflow sqlite store in `root` holding a tiny `dimo@champion`, registered by `training.registry.register`;
    yields its URI. The process's tracking URI and cwd (the registry's download cache ./.cache/registry goes into
    it) are `root`'s inside the block and restored after."""
    import warnings

    import mlflow
    import torch

    from dimo.models import DimoModel, LatentCodec, configs
    from dimo.training import registry

    previous, cwd = mlflow.get_tracking_uri(), os.getcwd()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    os.chdir(root)
    try:
        torch.manual_seed(0)
        model = DimoModel(configs.get("tiny", text_in_dim=384))
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("dimo", artifact_location=str(root / "art")))
        with mlflow.start_run(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow: "Add type hints to the `predict` method"
            registry.register(model, LatentCodec.tiny(), {"kind": "minilm", "path": None, "max_length": 16}, "dimo",
                              ["champion"])
        yield uri
    finally:
        os.chdir(cwd)
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A fresh copy of the project's configuration and layout (no data, no MLflow store) to run Kedro in."""
    dst = tmp_path / "project"
    dst.mkdir()
    for item in ("pyproject.toml", "conf", "dvc.yaml", "MLproject", "scripts", "src"):
        src = PROJECT_ROOT / item
        if src.is_dir():
            shutil.copytree(src, dst / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dst / item)
    shutil.rmtree(dst / "conf" / "local", ignore_errors=True)
    (dst / "conf" / "local").mkdir()
    for layer in ("01_raw/videos", "02_intermediate", "03_primary", "08_reporting"):
        (dst / "data" / layer).mkdir(parents=True)
    return dst


def smoke_project(dst: Path) -> Path:
    """A git-initialised copy of the project's code and configuration at `dst` (no data, no MLflow store), with
    the metric weights the setup converted (LPIPS) linked in, as in the real project."""
    dst.mkdir(parents=True)
    for item in ("pyproject.toml", "conf", "src"):
        src = PROJECT_ROOT / item
        if src.is_dir():
            shutil.copytree(src, dst / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "local"))
        else:
            shutil.copy(src, dst / item)
    (dst / "conf" / "local").mkdir()
    (dst / "data" / "01_raw" / "videos").mkdir(parents=True)
    weights = PROJECT_ROOT / ".cache" / "weights"
    if weights.is_dir():
        (dst / ".cache").mkdir()
        (dst / ".cache" / "weights").symlink_to(weights)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst


@pytest.fixture(scope="session")
def smoke_chain(tmp_path_factory) -> Path:
    """A project copy after `kedro run --env=smoke`: the whole default chain (synthesis to evaluate) at smoke
    size, run once per session and shared by the training and evaluation tests."""
    dst = smoke_project(tmp_path_factory.mktemp("chain") / "project")
    out = run_cli(["kedro", "run", "--env=smoke"], cwd=dst, timeout=1500)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return dst


@pytest.fixture(autouse=True)
def _no_mlflow_experiment_between_tests(monkeypatch):
    """`mlflow.set_experiment` (kedro-mlflow calls it in-process) leaves the experiment id in MLFLOW_EXPERIMENT_ID
    and in a module global: a later test on another store would then look for an experiment that is not there."""
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri exported it: not for the next test's runs
    import sys

    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        fluent._active_experiment_id = None
