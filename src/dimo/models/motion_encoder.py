"""Implicit motion encoders (paper Sec. 3.2): a TiTok-style 1D tokenizer, and the SMPL-control stand-in.

`MotionEncoder` turns every driving frame (or a set of hand crops of that frame) into K compact latent tokens.
The semantic bottleneck is the point: only the K latent outputs leave the encoder, so 2D layout and appearance
have to be squeezed out (TiTok, Yu et al. 2024).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange


def encoder_layer_forward(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for our pre-norm, GELU, dropout-free layer with the same parameters and the same forward numbers,
    without nn.MultiheadAttention's training path (it transposes to (S, N, E) and back and copies q, k, v apart:
    ~8% of an encoder layer's fwd+bwd). Gradients agree with `layer(x)` up to float rounding (summation order)."""
    attn = layer.self_attn
    n, s, e = x.shape
    qkv = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, s, 3, attn.num_heads, e // attn.num_heads).permute(2, 0, 3, 1, 4)
    x = x + attn.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, s, e))
    return x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))


class MotionEncoder(ModelMixin, ConfigMixin):
    """Per-frame 1D tokenizer: (B, T, [V,] 3, H, W) in [-1, 1] -> (B, T, K, token_dim).

    `num_views` > 1 encodes several crops of one frame jointly (the hand encoder sees the left and right hand crop
    in one sequence); each view's patches get a learned view embedding so the encoder can tell them apart.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: tuple[int, int] = (64, 64),
        patch_size: int = 8,
        in_channels: int = 3,
        num_views: int = 1,
        width: int = 32,
        depth: int = 2,
        num_heads: int = 2,
        mlp_ratio: float = 4.0,
        num_latent_tokens: int = 5,
        token_dim: int = 32,
    ):
        super().__init__()
        h, w = sample_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"sample_size {sample_size} must be divisible by patch_size {patch_size}")
        self.num_patches = (h // patch_size) * (w // patch_size)
        scale = width**-0.5
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(scale * torch.randn(1, 1, self.num_patches, width))
        self.view_embed = nn.Parameter(scale * torch.randn(1, num_views, 1, width))
        self.latent_tokens = nn.Parameter(scale * torch.randn(1, num_latent_tokens, width))
        layer = nn.TransformerEncoderLayer(
            width, num_heads, int(width * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor is a padding-mask fast path we never use; disabling it silences a warning.
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, token_dim)
        self.gradient_checkpointing = False

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if frames.ndim == 5:  # (B, T, 3, H, W): single view
            frames = frames.unsqueeze(2)
        b, t, v = frames.shape[:3]
        if v != cfg.num_views:
            raise ValueError(f"expected {cfg.num_views} views, got {v}")
        x = rearrange(frames, "b t v c h w -> (b t v) c h w")
        if tuple(x.shape[-2:]) != tuple(cfg.sample_size):  # encoders run at a fixed size: resample the input
            x = F.interpolate(x, size=tuple(cfg.sample_size), mode="bilinear", align_corners=False, antialias=True)
        x = x.to(self.dtype)

        # --- the TiTok trick: patches + K learnable latent tokens -> transformer -> keep only the latents ---
        patches = rearrange(self.patch_embed(x), "(n v) d h w -> n v (h w) d", v=v)
        patches = (patches + self.pos_embed + self.view_embed).flatten(1, 2)  # (B*T, V*P, width)
        latents = self.latent_tokens.expand(patches.shape[0], -1, -1)
        seq = torch.cat([patches, latents], dim=1)
        if not torch.is_grad_enabled():  # inference: torch's fused encoder-layer kernel
            seq = self.transformer(seq)
        elif self.gradient_checkpointing:
            for layer in self.transformer.layers:
                seq = self._gradient_checkpointing_func(encoder_layer_forward, layer, seq)
        else:
            for layer in self.transformer.layers:
                seq = encoder_layer_forward(layer, seq)
        tokens = self.proj_out(self.norm_out(seq[:, -cfg.num_latent_tokens :]))
        return rearrange(tokens, "(b t) k d -> b t k d", b=b, t=t)


class PoseTokenizer(ModelMixin, ConfigMixin):
    """Ablation 'w/ SMPL ctrl.' (paper Sec. 4.4): SMPL pose coefficients -> MLP -> K tokens per frame.

    It replaces the learned video encoders but feeds the very same motion cross-attention.
    """

    @register_to_config
    def __init__(self, pose_dim: int = 126, hidden_dim: int = 256, num_tokens: int = 5, token_dim: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(pose_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, num_tokens * token_dim),
        )

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """pose (B, T, pose_dim) -> (B, T, num_tokens, token_dim)."""
        out = self.mlp(pose.to(self.dtype))
        return out.unflatten(-1, (self.config.num_tokens, self.config.token_dim))
