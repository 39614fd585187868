"""Pipeline `train_motion_tokenizer`: the MTVCrafter-style 4DMoT trained on the pseudo-labels' 3D joints, scored on
the test split (MPJPE mm, beside the mean pose) and registered in MLflow."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
