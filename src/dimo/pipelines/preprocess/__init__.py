"""Pipeline `preprocess`: encode clips to latents, prompts to embeddings, labels to decoder targets, once."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
