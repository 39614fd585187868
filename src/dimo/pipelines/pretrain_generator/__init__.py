"""Pipeline `pretrain_generator`: train stage 'pretrain' (see dimo.training.nodes) and register it in MLflow."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
