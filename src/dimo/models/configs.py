"""Named model configurations and ablation variants.

    cfg = configs.get("tiny")                          # toy scale, CPU tests
    cfg = configs.get("tiny", variant="channel_concat")
    cfg = configs.get("wan2.1-t2v-1.3b", flow={"shift": 3.0})

Scales: "tiny" (unit tests: 2 layers, 2 heads x 12, 64 px, 17 frames), "small"/"mid" (benchmarks), and the
real-scale "wan2.1-t2v-1.3b" / "wan2.1-i2v-14b" (Wan2.1 dims; bf16 + gradient checkpointing; never built on CPU
in tests). Variants (paper Table 2): "full", "channel_concat", "smpl_control", "no_hand", "no_geo".
Adding a variant = its name in `VARIANTS`, its config edit in `apply_variant`, its Table 2 row in `TABLE2` (if the
paper has one), and its entry in `ablation.variants` (conf/*/parameters_ablation.yml) to train it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields

VARIANTS = ("full", "channel_concat", "smpl_control", "no_hand", "no_geo")


@dataclass(frozen=True)
class Table2Row:
    label: str    # the row's name in 3DiMo Table 2
    variant: str  # one of VARIANTS
    stage: str    # the training stage after which it is scored
    paper: dict   # the paper's numbers, by metric name (dimo.evaluation.registry)


def _paper(ssim, psnr, lpips, fid, fvd) -> dict:
    return {"ssim": ssim, "psnr": psnr, "lpips": lpips, "fid": fid, "fvd": fvd}


# 3DiMo Table 2 in the paper's row order (SSIM, PSNR, LPIPS, FID, FVD on TikTok + internet videos, 121 frames at
# 480p). "w/ stage 1 only" / "w/ stage 1 & 2" are the full model scored after its earlier stages.
TABLE2 = (
    Table2Row("w/ SMPL ctrl.", "smpl_control", "stage3", _paper(0.724, 17.1, 0.238, 39.7, 348.2)),
    Table2Row("w/ stage 1 only", "full", "stage1", _paper(0.745, 18.3, 0.220, 40.5, 305.4)),
    Table2Row("w/ stage 1 & 2", "full", "stage2", _paper(0.723, 17.9, 0.221, 38.2, 314.5)),
    Table2Row("w/ channel concat.", "channel_concat", "stage3", _paper(0.703, 16.8, 0.304, 48.2, 395.6)),
    Table2Row("w/o geo. superv.", "no_geo", "stage3", _paper(0.684, 15.8, 0.347, 51.3, 383.1)),
    Table2Row("w/o hand enc.", "no_hand", "stage3", _paper(0.726, 17.5, 0.234, 38.1, 298.7)),
    Table2Row("Full Model", "full", "stage3", _paper(0.739, 18.0, 0.221, 36.9, 297.4)),
)


@dataclass
class DimoConfig:
    name: str
    generator: dict  # DimoWanTransformer kwargs
    body_encoder: dict | None  # MotionEncoder kwargs (None: SMPL control)
    hand_encoder: dict | None  # MotionEncoder kwargs, num_views=2 (None: "w/o hand enc.")
    geometric_decoder: dict | None  # GeometricDecoder kwargs (None: "w/o geo. superv.")
    pose_tokenizer: dict | None = None  # PoseTokenizer kwargs, only for "w/ SMPL ctrl."
    hand_crop_size: tuple[int, int] = (32, 32)
    text_in_dim: int = 384  # raw text-encoder width (MiniLM 384, UMT5 4096)
    text_encoder: str = "minilm"  # "minilm" | "umt5"
    text_max_length: int = 64
    augment: dict = field(default_factory=dict)  # AugmentConfig kwargs
    flow: dict = field(default_factory=dict)  # FlowMatchingConfig kwargs
    geo_schedule: dict = field(default_factory=lambda: {"start": 0.1, "end": 0.0, "end_step": 12000,
                                                         "shape": "linear"})
    p_drop_text: float = 0.1
    p_drop_motion: float = 0.1
    reference_condition: str = "latent_pad"  # or "wan_i2v": see docs/models.md
    variant: str = "full"
    # Training-loop hints (the loop applies them; the library only exposes the switches):
    mixed_precision: str = "no"  # "no" | "bf16"
    gradient_checkpointing: bool = False

    @property
    def num_motion_tokens(self) -> int:
        if self.pose_tokenizer is not None:
            return self.pose_tokenizer["num_tokens"]
        k = self.body_encoder["num_latent_tokens"]
        return k + (self.hand_encoder["num_latent_tokens"] if self.hand_encoder else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> DimoConfig:
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        for key in ("hand_crop_size",):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        for enc in ("body_encoder", "hand_encoder"):
            if d.get(enc) and "sample_size" in d[enc]:
                d[enc] = {**d[enc], "sample_size": tuple(d[enc]["sample_size"])}
        if d.get("generator") and "patch_size" in d["generator"]:
            d["generator"] = {**d["generator"], "patch_size": tuple(d["generator"]["patch_size"])}
        return cls(**d)


def _wan_generator(heads, ffn, layers, in_channels=36, image_dim=None, added_kv=None, motion_dim=1024, k=10):
    return dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128, in_channels=in_channels,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn, num_layers=layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=image_dim, added_kv_proj_dim=added_kv,
                rope_max_seq_len=1024, motion_conditioning="cross_attention", motion_token_dim=motion_dim,
                num_motion_tokens=k, motion_attention="latent_frame", temporal_compression=4, motion_channels=16)


def _toy(name, dim_heads, head_dim, layers, ffn, image, hand, enc_width, enc_depth, token_dim, dec_hidden):
    return DimoConfig(
        name=name,
        generator=dict(patch_size=(1, 2, 2), num_attention_heads=dim_heads, attention_head_dim=head_dim,
                       in_channels=36, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=ffn, num_layers=layers,
                       cross_attn_norm=True, rope_max_seq_len=64, motion_token_dim=token_dim, num_motion_tokens=10),
        body_encoder=dict(sample_size=(image, image), patch_size=8 if image <= 64 else 16, num_views=1,
                          width=enc_width, depth=enc_depth, num_heads=2 if enc_width <= 32 else 4,
                          num_latent_tokens=5, token_dim=token_dim),
        hand_encoder=dict(sample_size=(hand, hand), patch_size=8, num_views=2, width=enc_width,
                          depth=max(1, enc_depth - 1), num_heads=2 if enc_width <= 32 else 4, num_latent_tokens=5,
                          token_dim=token_dim),
        geometric_decoder=dict(num_tokens=10, token_dim=token_dim, hidden_dim=dec_hidden, num_layers=2),
        hand_crop_size=(hand, hand),
        flow={"shift": 3.0},
    )


def _real(name, generator, text_len=512):
    d = 1024
    return DimoConfig(
        name=name,
        generator=generator,
        # ViT-B/16 body encoder on 256x448 frames (480x832 driving video downscaled), ViT-S-like hand encoder.
        body_encoder=dict(sample_size=(256, 448), patch_size=16, num_views=1, width=768, depth=12, num_heads=12,
                          num_latent_tokens=5, token_dim=d),
        hand_encoder=dict(sample_size=(128, 128), patch_size=16, num_views=2, width=512, depth=8, num_heads=8,
                          num_latent_tokens=5, token_dim=d),
        geometric_decoder=dict(num_tokens=10, token_dim=d, hidden_dim=1024, num_layers=2),
        hand_crop_size=(128, 128),
        text_in_dim=4096,
        text_encoder="umt5",
        text_max_length=text_len,
        flow={"shift": 5.0},
        mixed_precision="bf16",
        gradient_checkpointing=True,
    )


_REGISTRY = {
    "tiny": lambda: _toy("tiny", 2, 12, 2, 48, 64, 32, 32, 2, 32, 64),
    "small": lambda: _toy("small", 4, 32, 4, 512, 128, 32, 64, 2, 64, 256),
    "mid": lambda: _toy("mid", 6, 64, 6, 1536, 128, 64, 192, 4, 256, 512),
    "wan2.1-t2v-1.3b": lambda: _real("wan2.1-t2v-1.3b", _wan_generator(12, 8960, 30)),
    "wan2.1-i2v-14b": lambda: _real("wan2.1-i2v-14b", _wan_generator(40, 13824, 40, image_dim=1280, added_kv=5120)),
}


def names() -> list[str]:
    return list(_REGISTRY)


def apply_variant(cfg: DimoConfig, variant: str) -> DimoConfig:
    """Paper Table 2 ablations as config edits."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    cfg = copy.deepcopy(cfg)
    cfg.variant = variant
    tok_dim = cfg.generator["motion_token_dim"]
    if variant == "channel_concat":
        cfg.generator["motion_conditioning"] = "channel_concat"
    elif variant == "no_geo":
        cfg.geometric_decoder = None
    elif variant == "no_hand":
        cfg.hand_encoder = None
        k = cfg.body_encoder["num_latent_tokens"]
        cfg.generator["num_motion_tokens"] = k
        if cfg.geometric_decoder is not None:
            cfg.geometric_decoder = {**cfg.geometric_decoder, "num_tokens": k, "num_hands": 0}
    elif variant == "smpl_control":
        # SMPL body pose (no root) -> MLP -> tokens, into the same cross-attention; nothing to supervise.
        dec = cfg.geometric_decoder or {}
        pose_dim = dec.get("n_body_joints", 21) * dec.get("rot_dim", 6)
        k = cfg.body_encoder["num_latent_tokens"]
        cfg.pose_tokenizer = dict(pose_dim=pose_dim, hidden_dim=4 * tok_dim, num_tokens=k, token_dim=tok_dim)
        cfg.body_encoder = cfg.hand_encoder = cfg.geometric_decoder = None
        cfg.generator["num_motion_tokens"] = k
    return cfg


def get(name: str, variant: str = "full", **overrides) -> DimoConfig:
    """A fresh copy of a named config; `overrides` replace top-level fields (dicts are merged one level)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown config {name!r}; known: {names()}")
    cfg = apply_variant(_REGISTRY[name](), variant)
    for key, value in overrides.items():
        current = getattr(cfg, key)
        setattr(cfg, key, {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value)
    return cfg
