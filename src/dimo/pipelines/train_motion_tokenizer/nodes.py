"""Train the 4DMoT on the train split's label windows, score it on the test split, register it."""

from __future__ import annotations

import logging
import tempfile

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from dimo.baselines import tokenizer_training
from dimo.baselines.motion_tokenizer import MotionTokenizer

log = logging.getLogger(__name__)


def train_motion_tokenizer(clips: pd.DataFrame, params: dict) -> tuple[MotionTokenizer, dict, dict]:
    """The trained tokenizer, its loss curves (MLflow metrics with steps) and the held-out report."""
    tried = []
    for candidate in tokenizer_training.held_out_splits(clips):
        train_clips, held_clips, held_what = candidate
        held_out = tokenizer_training.clip_windows(held_clips, params["window"], params["stride"])
        tried.append(f"{len(held_out)} in the {held_what}")
        if len(held_out):
            break
    train = tokenizer_training.clip_windows(train_clips, params["window"], params["stride"])
    if not len(train) or not len(held_out):
        raise ValueError(f"train_motion_tokenizer: no {params['window']}-frame windows of valid labelled frames "
                         f"to train and score on ({len(train)} in the train clips; {', '.join(tried)})")
    model, history = tokenizer_training.fit(train, params, params["seed"])
    report = {**tokenizer_training.score(model, held_out, train), "train_windows": len(train),
              "held_out": held_what, "steps": params["steps"]}
    log.info("motion tokenizer: held-out MPJPE %.1f mm (mean pose %.1f mm), %.0f%% of codes used",
             report["heldout_mpjpe_mm"], report["mean_pose_mpjpe_mm"], 100 * report["codebook_usage"])
    every = max(1, params["steps"] // 100)
    # kedro-mlflow logs each as motion_tokenizer_metrics.<key>
    metrics = {k: [{"value": h[k], "step": h["step"]} for h in history[::every]]
               for k in ("loss", "reconstruction", "commitment")}
    for k in ("heldout_mpjpe_mm", "mean_pose_mpjpe_mm", "codebook_usage"):
        metrics[k] = [{"value": float(report[k]), "step": params["steps"]}]
    return model, metrics, report


def register_motion_tokenizer(model: MotionTokenizer, report: dict, params: dict) -> dict:
    """A version of `registered_model_name` in the MLflow registry (the folder as the active run's artifact),
    tagged with its held-out scores, with `aliases`."""
    name = params["registered_model_name"]
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        mlflow.log_artifacts(tmp, "motion_tokenizer")
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run = mlflow.active_run()
    version = client.create_model_version(name, source=mlflow.get_artifact_uri("motion_tokenizer"),
                                          run_id=run.info.run_id if run else None).version
    for alias in params["aliases"]:
        client.set_registered_model_alias(name, alias, version)
    for key in ("heldout_mpjpe_mm", "mean_pose_mpjpe_mm", "codebook_usage"):
        client.set_model_version_tag(name, version, key, f"{report[key]:.4g}")
    log.info("registered %s version %s as %s", name, version, ", ".join(params["aliases"]))
    return {"name": name, "version": str(version), "aliases": list(params["aliases"]),
            "model_uri": f"models:/{name}/{version}"}
