"""Pipeline `train_stage3`: train stage 'stage3' (see dimo.training.nodes) and register it in MLflow."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
