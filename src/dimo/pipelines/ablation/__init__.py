"""Pipeline `ablation`: 3DiMo Table 2's variants trained and scored at toy scale, beside the paper's numbers."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
