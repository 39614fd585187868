"""Pipeline `train_stage2`: train stage 'stage2' (see dimo.training.nodes) and register it in MLflow."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
