"""Project pipelines. Each folder in pipelines/ registers under its own name; __default__ chains the main job."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The main job, in data-flow order; a name is used only if its pipeline exists.
DEFAULT_CHAIN = (
    "synthesize_views",
    "ingest",
    "validate",
    "pseudo_label",
    "preprocess",
    "pretrain_generator",
    "train_stage1",
    "train_stage2",
    "train_stage3",
    "evaluate",
)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT_CHAIN if name in pipelines), Pipeline([]))
    return pipelines
