"""The registered pyfunc model, logged as code (MLflow's models-from-code): no pickle anywhere in a version.

`training.registry.register` logs this file's path as `python_model`; MLflow copies the file (readable Python, not a
cloudpickle blob) beside the artifacts, which are the safetensors folders `dimo/`, `codec/vae/` and
`text_encoder.json`. `mlflow.pyfunc.load_model("models:/dimo@champion")` runs this file and `load_context`,
which loads those folders through `dimo.inference.load`, the same loader as `dimo animate`; nothing is unpickled.
`model_config={"device": "cuda"}` at load time picks the device (default cpu).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.models
import mlflow.pyfunc


class DimoPyfunc(mlflow.pyfunc.PythonModel):
    """`mlflow.pyfunc.load_model("models:/dimo@champion")`: the model, its codec and its text encoder."""

    def load_context(self, context) -> None:
        from dimo import inference

        folder = Path(context.artifacts["dimo"]).parent  # dimo/, codec/, text_encoder.json side by side
        device = (context.model_config or {}).get("device", "cpu")
        self.runner = inference.load(str(folder), device=device)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would try to validate dicts
        """model_input: {"reference_image": (1,3,H,W) [-1,1], "driving_frames": (1,T,3,h,w) [-1,1],
        "prompt": str, optional "hand_keypoints"}; returns the generated video (1,3,T,H,W) in [-1, 1] on the CPU."""
        import torch

        params, r = params or {}, self.runner
        with torch.no_grad():
            emb, mask = r.text_encoder.encode([model_input["prompt"]])
            hands = model_input.get("hand_keypoints")
            video = r.model.generate(
                r.codec, model_input["reference_image"].to(r.device), model_input["driving_frames"].to(r.device),
                emb.to(r.device), mask.to(r.device), hand_keypoints=None if hands is None else hands.to(r.device),
                num_steps=int(params.get("num_steps", 20)), guidance_text=float(params.get("guidance_text", 1.0)),
                guidance_motion=float(params.get("guidance_motion", 1.0)))
        return video.cpu()


mlflow.models.set_model(DimoPyfunc())
