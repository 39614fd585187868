"""3DiMo network library (diffusers style): one model part per module, config-registered, save/load-able.

Training loop entry points: `DimoModel` (training_losses, generate, save_pretrained / from_pretrained /
from_stock_pretrained), `configs.get`, `LatentCodec`, `FrozenTextEncoder`. See docs/models.md.
"""

import importlib

# Lazy (PEP 562): `from dimo.models import configs` must not import torch and diffusers, because the CLI's
# weight-folder check (dimo.cli_hooks) reads model configs before Kedro starts. Each name -> its module.
_HOMES = {
    "AugmentConfig": "augment", "DrivingAugment": "augment", "DimoConfig": "configs", "DimoModel": "dimo_model",
    "FlowMatching": "flow_matching", "FlowMatchingConfig": "flow_matching", "shift_timesteps": "flow_matching",
    "DimoWanTransformer": "generator", "DimoWanTransformerBlock": "generator", "pad_text_embeddings": "generator",
    "stock_param_count": "generator", "GeometricDecoder": "geometric_decoder",
    "masked_pose_loss": "geometric_decoder", "crop_hands": "hand_crops", "hand_boxes": "hand_crops",
    "MotionEncoder": "motion_encoder", "PoseTokenizer": "motion_encoder", "AnnealSchedule": "schedules",
    "FrozenTextEncoder": "text_encoder", "TextProjection": "text_encoder", "minilm_path": "text_encoder",
    "LatentCodec": "vae",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnnealSchedule", "AugmentConfig", "DimoConfig", "DimoModel", "DimoWanTransformer", "DimoWanTransformerBlock",
    "DrivingAugment", "FlowMatching", "FlowMatchingConfig", "FrozenTextEncoder", "GeometricDecoder", "LatentCodec",
    "MotionEncoder", "PoseTokenizer", "TextProjection", "configs", "crop_hands", "hand_boxes", "masked_pose_loss",
    "minilm_path", "pad_text_embeddings", "shift_timesteps", "stock_param_count",
]
