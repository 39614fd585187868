"""3DiMo network library (diffusers style): one model part per module, config-registered, save/load-able.

Training loop entry points: `DimoModel` (training_losses, generate, save_pretrained / from_pretrained /
from_stock_pretrained), `configs.get`, `LatentCodec`, `FrozenTextEncoder`. See docs/models.md.
"""

from . import configs
from .augment import AugmentConfig, DrivingAugment
from .configs import DimoConfig
from .dimo_model import DimoModel
from .flow_matching import FlowMatching, FlowMatchingConfig, shift_timesteps
from .generator import DimoWanTransformer, DimoWanTransformerBlock, pad_text_embeddings, stock_param_count
from .geometric_decoder import GeometricDecoder, masked_pose_loss
from .hand_crops import crop_hands, hand_boxes
from .motion_encoder import MotionEncoder, PoseTokenizer
from .schedules import AnnealSchedule
from .text_encoder import FrozenTextEncoder, TextProjection, minilm_path
from .vae import LatentCodec

__all__ = [
    "AnnealSchedule", "AugmentConfig", "DimoConfig", "DimoModel", "DimoWanTransformer", "DimoWanTransformerBlock",
    "DrivingAugment", "FlowMatching", "FlowMatchingConfig", "FrozenTextEncoder", "GeometricDecoder", "LatentCodec",
    "MotionEncoder", "PoseTokenizer", "TextProjection", "configs", "crop_hands", "hand_boxes", "masked_pose_loss",
    "minilm_path", "pad_text_embeddings", "shift_timesteps", "stock_param_count",
]
