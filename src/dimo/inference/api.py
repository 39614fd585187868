"""Loading a model (registry URI or local folder) and the one-call API: `animate`, `novel_view`, `stabilize`
check their inputs first, then load the model (or take a loaded `Dimo`) and run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dimo.inference.inputs import (
    DEFAULT_MODEL,
    InferenceError,
    Options,
    one_line,
    prepare_animate,
    prepare_novel_view,
    prepare_stabilize,
)
from dimo.inference.runner import Dimo, Result


# ------------------------------------------------------------------ loading
def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise InferenceError(f"unknown device {device!r} ({one_line(err)})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r} asked for but no CUDA GPU is available")
    return dev


def model_folder(model: str, tracking_uri: str | None = None) -> Path:
    """The artifacts folder of a registered version (downloaded once, cached under ./.cache/registry) or the
    given local folder, checked for dimo/, codec/ and text_encoder.json."""
    if model.startswith("models:/"):
        import warnings

        import mlflow

        with warnings.catch_warnings():  # MLflow's note about type hints on DimoPyfunc.predict: not for users
            warnings.simplefilter("ignore", UserWarning)
            from dimo.training import registry

        from dimo import tracking

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        uri = mlflow.get_tracking_uri()  # else MLFLOW_TRACKING_URI, else ./mlflow.db: as dimo.tracking says
        if reason := tracking.unreachable(uri):
            raise InferenceError(f"{uri}: the MLflow tracking server is unreachable ({one_line(reason)}), so no "
                                 f"{model}; start it or pass another --tracking-uri")
        store = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        if store and store != ":memory:" and not Path(store).is_file():  # MLflow would create an empty store
            raise InferenceError(f"{store}: no MLflow store there, so no {model}; pass --tracking-uri (or set "
                                 "MLFLOW_TRACKING_URI, as scripts/env.sh does for the project's mlflow.db)")
        try:
            folder = registry.download(model)
        except LookupError as err:
            cause = getattr(err.__cause__, "message", None) or str(err)
            raise InferenceError(f"{model}: unknown registered model or alias in {uri} "
                                 f"({one_line(cause)})") from None
    else:
        folder = Path(model)
        if not folder.is_dir():
            raise InferenceError(f"{model}: neither a registered model URI (models:/name@alias) nor a model folder")
    missing = [p for p in ("dimo", "codec", "text_encoder.json") if not (folder / p).exists()]
    if missing:
        raise InferenceError(f"{folder}: not a model folder, missing {', '.join(missing)} "
                             "(expected dimo/, codec/vae/, text_encoder.json)")
    return folder


def load(model: str = DEFAULT_MODEL, device: str | None = "auto", tracking_uri: str | None = None,
         text_encoder_path: str | None = None, dtype: torch.dtype | str = torch.float32) -> Dimo:
    """Load a model by registry URI (`models:/dimo@champion`, `models:/dimo/3`) or local folder.
    `text_encoder_path` overrides the UMT5 folder recorded at training time (another machine)."""
    dev = resolve_device(device)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    folder = model_folder(model, tracking_uri)

    from dimo.models import DimoModel, LatentCodec
    from dimo.models.text_encoder import from_spec

    spec = json.loads((folder / "text_encoder.json").read_text())
    if text_encoder_path:
        spec = {**spec, "path": text_encoder_path}
    dimo = DimoModel.from_pretrained(str(folder / "dimo"))
    codec = LatentCodec.from_pretrained(str(folder / "codec"), subfolder="vae")
    try:
        texts = from_spec(spec)
    except OSError as err:
        raise InferenceError(f"{folder / 'text_encoder.json'}: cannot load the text encoder {spec} "
                             f"({one_line(err)}); pass its folder with text_encoder_path") from None
    return Dimo(dimo, codec, texts, dev, source=model, dtype=dtype)


# ------------------------------------------------------------------ one-call API
def animate(reference, driving, output=None, model: str | Dimo = DEFAULT_MODEL, options: Options | None = None,
            device: str | None = "auto", **kwargs) -> Result:
    """Reference image + driving video (+ prompt or camera key, subject, action, keypoints) -> Result.
    Inputs are checked before the model is loaded."""
    job = prepare_animate(reference, driving, fps=(options or Options()).fps, **kwargs)
    return _loaded(model, device).run(job, output, options)


def novel_view(image, output=None, model: str | Dimo = DEFAULT_MODEL, options: Options | None = None,
               device: str | None = "auto", **kwargs) -> Result:
    """One image + camera prompt (or key) -> Result; kwargs: prompt, camera, subject, action, num_frames."""
    return _loaded(model, device).run(prepare_novel_view(image, **kwargs), output, options)


def stabilize(video, output=None, model: str | Dimo = DEFAULT_MODEL, options: Options | None = None,
              device: str | None = "auto", **kwargs) -> Result:
    """A (shaky) video -> Result filmed from its first frame's fixed viewpoint; kwargs: subject, action, keypoints."""
    job = prepare_stabilize(video, fps=(options or Options()).fps, **kwargs)
    return _loaded(model, device).run(job, output, options)


def _loaded(model: str | Dimo, device) -> Dimo:
    return model if isinstance(model, Dimo) else load(model, device)
