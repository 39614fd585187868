"""A registered version holds no pickle and loads with none: MLflow's models-from-code plus safetensors folders."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from dimo import inference
from tests.conftest import tiny_champion_store
from tests.tracking_server import pickle_audit


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A throwaway sqlite store holding a tiny `dimo@champion`, registered by `training.registry.register`."""
    root = tmp_path_factory.mktemp("no_pickle")
    with tiny_champion_store(root):
        yield root


def test_a_registered_version_is_code_plus_safetensors_with_no_pickle_file(store):
    local = mlflow.artifacts.download_artifacts("models:/dimo@champion", dst_path=str(store / "dl"))
    files = sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*")
                   if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".bin"))], files
    assert "registry_model.py" in files and any(f.endswith(".safetensors") for f in files), files
    flavor = yaml.safe_load((Path(local) / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor.get("model_code_path", "").endswith("registry_model.py") and "python_model" not in flavor, flavor


def test_loading_from_the_registry_unpickles_nothing_and_generates(store):
    with pickle_audit() as seen:
        model = mlflow.pyfunc.load_model("models:/dimo@champion")
    assert seen == [], f"loading models:/dimo@champion unpickled: {seen[:5]}"
    video = model.unwrap_python_model().predict(
        None, {"reference_image": torch.rand(1, 3, 64, 64) * 2 - 1,
               "driving_frames": torch.rand(1, 17, 3, 32, 32) * 2 - 1,
               "prompt": "A person waves. The camera remains static."}, params={"num_steps": 2})
    assert video.shape == (1, 3, 17, 64, 64) and torch.isfinite(video).all()
    # dimo.inference keeps reading the same safetensors folder
    assert isinstance(inference.load("models:/dimo@champion", device="cpu"), inference.Dimo)


def test_the_audit_sees_a_pickled_model():
    """The guard can fail: a cloudpickled pyfunc (what registry.py used to log) is seen."""
    import cloudpickle

    blob = cloudpickle.dumps(mlflow.pyfunc.PythonModel())
    with pickle_audit() as seen:
        cloudpickle.loads(blob)
    assert seen
