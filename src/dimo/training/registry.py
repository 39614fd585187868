"""The MLflow model registry: one registered model, a version per stage, aliases (base, stage1..3, champion).

A registered version is an MLflow pyfunc model whose artifacts are the diffusers-style folders: the 3DiMo
model (safetensors + config per part), the latent codec, and the text-encoder spec. Stages find their starting
point by alias (`models:/dimo@stage1`), never by a path guess.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

CACHE_DIR = Path(".cache") / "registry"


class DimoPyfunc(mlflow.pyfunc.PythonModel):
    """`mlflow.pyfunc.load_model("models:/dimo@champion")`: the model, its codec and its text encoder."""

    def load_context(self, context) -> None:
        from dimo.models import DimoModel, LatentCodec

        self.model = DimoModel.from_pretrained(context.artifacts["dimo"]).eval()
        self.codec = LatentCodec.from_pretrained(context.artifacts["codec"], subfolder="vae").eval()
        self.text_spec = json.loads(Path(context.artifacts["text_encoder"]).read_text())

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would try to validate dicts
        """model_input: {"reference_image": (1,3,H,W) [-1,1], "driving_frames": (1,T,3,h,w) [-1,1],
        "prompt": str, optional "hand_keypoints"}; returns the generated video (1,3,T,H,W) in [-1, 1]."""
        from dimo.models.text_encoder import from_spec

        params = params or {}
        emb, mask = from_spec(self.text_spec).encode([model_input["prompt"]])
        return self.model.generate(self.codec, model_input["reference_image"], model_input["driving_frames"], emb,
                                   mask, hand_keypoints=model_input.get("hand_keypoints"),
                                   num_steps=int(params.get("num_steps", 20)),
                                   guidance_text=float(params.get("guidance_text", 1.0)),
                                   guidance_motion=float(params.get("guidance_motion", 1.0)))


def register(model, codec, text_spec: dict, name: str, aliases: list[str], tags: dict | None = None) -> dict:
    """Log model + codec + text spec as a pyfunc model in the active run, register a version, set aliases."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(f"{tmp}/dimo")
        codec.vae.save_pretrained(f"{tmp}/codec/vae")
        Path(f"{tmp}/text_encoder.json").write_text(json.dumps(text_spec))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=DimoPyfunc(),
            artifacts={"dimo": f"{tmp}/dimo", "codec": f"{tmp}/codec", "text_encoder": f"{tmp}/text_encoder.json"},
            pip_requirements=["dimo"],  # the project package; skips MLflow's slow dependency inference
            registered_model_name=name)
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    log.info("registered %s version %s as %s", name, version, ", ".join(aliases))
    return {"name": name, "version": version, "aliases": aliases, "model_uri": info.model_uri,
            "run_id": mlflow.active_run().info.run_id if mlflow.active_run() else None}


def resolve(uri: str) -> dict:
    """The version a registry URI (`models:/name@alias` or `models:/name/version`) points at now: name, version,
    run id, tags and the pinned URI `models:/name/version`."""
    name, _, ref = uri.removeprefix("models:/").partition("@")
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, ref) if ref else client.get_model_version(
            *name.rsplit("/", 1))
    except (MlflowException, TypeError) as err:
        reason = err.message if isinstance(err, MlflowException) else "expected models:/name@alias or models:/name/N"
        raise LookupError(f"{uri}: no such registered model version in {mlflow.get_tracking_uri()} "
                          f"(was the previous stage run?): {reason}") from err
    return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags),
            "uri": f"models:/{mv.name}/{mv.version}"}


def download(uri: str) -> Path:
    """Local folder of a registered model (`models:/name@alias` or `models:/name/version`), cached by version."""
    mv = resolve(uri)
    target = CACHE_DIR / mv["name"] / f"{mv['version']}-{mv['run_id']}"  # the run id tells stores apart
    if not (target / "artifacts" / "dimo").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=mv["uri"], dst_path=str(target))
    return target / "artifacts"


def load_model(uri: str):
    """A DimoModel from `models:/...`, a local model folder, or `wan:<folder>` (stock Wan2.1 + new motion parts)."""
    from dimo.models import DimoModel

    if uri.startswith("models:/"):
        return DimoModel.from_pretrained(str(download(uri) / "dimo"))
    if uri.startswith("wan:"):
        raise ValueError("wan:<folder> needs a model config: use DimoModel.from_stock_pretrained(config, folder)")
    if not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: not a registered model URI (models:/name@alias) nor a model folder")
    return DimoModel.from_pretrained(uri)
