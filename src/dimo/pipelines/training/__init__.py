"""The training pipelines, one per `dimo.training.stages.STAGES` entry: train the stage, register its weights."""

from .pipeline import stage_pipeline

__all__ = ["stage_pipeline"]
