"""Pipeline `study`: the toy model trained long enough to use its motion, H1-H5 over seeds (docs/study.md)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
