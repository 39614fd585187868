"""One Kedro pipeline per training stage, built from its spec (`dimo.training.stages.Stage`)."""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from dimo.training.nodes import register_stage, run_stage
from dimo.training.stages import Stage


def _for_stage(func, key: str):
    """`func` with the stage key bound; keeps its name, which Kedro shows in logs and `kedro viz`."""
    return update_wrapper(partial(func, key), func)


def stage_pipeline(stage: Stage) -> Pipeline:
    """Train (after the previous stage's registration, reading the sweep's best parameters for paper stages),
    then register."""
    out = stage.outputs
    return Pipeline([
        Node(_for_stage(run_stage, stage.key), stage.inputs, [out["model"], out["summary"]],
             name=f"train_{stage.key}", tags=[f"starts_from.training.stages.{stage.key}.init"]),  # dimo.preflight
        Node(_for_stage(register_stage, stage.key),
             [out["model"], "latent_codec", "preprocess_manifest", out["summary"], "params:training"],
             out["registration"], name=f"register_{stage.key}"),
    ])
