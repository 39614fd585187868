"""Project pipelines: one per folder in pipelines/, one per training stage (`dimo.training.stages.STAGES`), and
__default__, the main job in data-flow order."""

from __future__ import annotations

import importlib

from kedro.pipeline import Pipeline

from dimo.pipelines.training import stage_pipeline
from dimo.training.stages import STAGES

DATA_PIPELINES = ("synthesize_views", "ingest", "validate", "pseudo_label", "preprocess")  # data-flow order
# Folders listed by name, not found by `find_pipelines`: Kedro 1.7 then loads only the folders a
# `--pipelines=...` run names, and refuses a stage's pipeline, which has no folder of its own.
FOLDER_PIPELINES = (*DATA_PIPELINES, "train_motion_tokenizer", "evaluate", "ablation", "annealing_sweep", "study")
DEFAULT_CHAIN = (*DATA_PIPELINES, "train_motion_tokenizer", *(s.pipeline for s in STAGES), "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {name: importlib.import_module(f"dimo.pipelines.{name}").create_pipeline()
                 for name in FOLDER_PIPELINES}
    pipelines |= {s.pipeline: stage_pipeline(s) for s in STAGES}
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT_CHAIN), Pipeline([]))
    return pipelines
