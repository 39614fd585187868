"""Pipeline `train_stage1`: train stage 'stage1' (see dimo.training.nodes) and register it in MLflow."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
