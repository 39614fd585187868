"""Pipeline `validate`: a great-expectations suite over the clip table; failures are quarantined, never deleted."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
