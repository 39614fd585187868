"""Pipeline `ingest`: user videos (+ optional manifest) -> normalised clips and the clip table."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
