"""synthesize_views: the embedded view-rich dataset (Anny x DeepMimic x vocabulary camera rigs)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
