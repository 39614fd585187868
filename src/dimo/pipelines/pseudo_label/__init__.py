"""Pipeline `pseudo_label`: mediapipe keypoints -> fitted body/hand pose labels for the geometric decoder, gated,
cached by content hash, and scored against synthetic ground truth."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
