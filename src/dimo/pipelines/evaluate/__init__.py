"""Pipeline `evaluate`: a registered model on the benchmark (Table 1 metrics, the view-rich benchmark)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
