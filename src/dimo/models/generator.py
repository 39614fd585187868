"""The 3DiMo video generator: diffusers' Wan2.1 DiT plus per-block motion cross-attention (paper Sec. 3.2).

Design (see docs/models.md):
* `DimoWanTransformerBlock` = stock `WanTransformerBlock` + `norm_motion`/`attn_motion` right after the
  self-attention. Only the video tokens are queries; motion tokens are keys/values (text lives in `attn2`, untouched).
  `attn_motion.to_out` is zero-initialised, so at init the model equals the stock model exactly.
* Motion tokens reach the blocks as an explicit 5th positional argument: `forward` is re-implemented here (it is the
  stock forward plus one argument). Stashing them on an attribute would break gradient checkpointing: the
  non-reentrant checkpoint re-runs blocks during backward, after the attribute may have changed.
* Temporal alignment ("latent_frame" mode): Wan's causal VAE maps pixel frame 0 to latent frame 0 and frames
  4j-3..4j to latent frame j. Motion tokens of those frames form latent frame j's chunk; frame 0's tokens are
  repeated 4x so all chunks have 4K tokens (identical duplicated keys leave softmax attention unchanged). Video
  tokens of latent frame j attend only to their chunk: the batch is reshaped (B, F*hw) -> (B*F, hw), no mask.
  "full" mode lets every video token attend to all T*K motion tokens. Both add a fixed sinusoidal embedding of the
  driving-frame index and a learned per-slot embedding (which of the K tokens; body vs hand).
* Variant `motion_conditioning="channel_concat"` (ablation): per-latent-frame motion chunk -> linear ->
  `motion_channels` maps broadcast over (h, w) and concatenated to the DiT input; the extra patch-embedding
  input channels start at zero.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from typing import Any

import torch
import torch.nn as nn
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import PixArtAlphaTextProjection, get_1d_sincos_pos_embed_from_grid
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import no_init_weights
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanTransformer3DModel,
    WanTransformerBlock,
)
from diffusers.utils import apply_lora_scale
from einops import rearrange
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

MOTION_CONDITIONINGS = ("cross_attention", "channel_concat")
MOTION_ATTENTIONS = ("latent_frame", "full")
WAN_TEXT_LEN = 512  # WanAttnProcessor hard-codes it when image tokens are present (I2V)


class DimoWanTransformerBlock(WanTransformerBlock):
    def __init__(self, dim, ffn_dim, num_heads, qk_norm="rms_norm_across_heads", cross_attn_norm=False, eps=1e-6,
                 added_kv_proj_dim=None):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim)
        self.norm_motion = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.attn_motion = WanAttention(dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=eps,
                                        cross_attention_dim_head=dim // num_heads, processor=WanAttnProcessor())
        self.reset_motion_parameters()

    def reset_motion_parameters(self):
        for m in (self.norm_motion, *self.attn_motion.modules()):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        nn.init.zeros_(self.attn_motion.to_out[0].weight)  # identity at init: the stock model, exactly
        nn.init.zeros_(self.attn_motion.to_out[0].bias)

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb, motion_context=None):
        if temb.ndim == 4:  # (B, seq, 6, dim): per-token timesteps (Wan2.2 TI2V)
            mods = (self.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
            mods = [m.squeeze(2) for m in mods]
        else:  # (B, 6, dim): Wan2.1
            mods = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods

        # 1. Self-attention (stock)
        norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        # 1b. Motion cross-attention (new): video tokens -> motion tokens. motion_context is (B*G, M, dim);
        # G > 1 splits the video sequence into G equal groups (one per latent frame) with their own motion chunk.
        if motion_context is not None:
            b, n, d = hidden_states.shape
            groups = motion_context.shape[0] // b
            query = self.norm_motion(hidden_states.float()).type_as(hidden_states).reshape(b * groups, n // groups, d)
            motion_out = self.attn_motion(query, motion_context.type_as(hidden_states), None, None)
            hidden_states = hidden_states + motion_out.reshape(b, n, d)

        # 2. Text cross-attention (stock)
        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        attn_output = self.attn2(norm_hidden_states, encoder_hidden_states, None, None)
        hidden_states = hidden_states + attn_output

        # 3. Feed-forward (stock)
        norm_hidden_states = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(
            hidden_states)
        ff_output = self.ffn(norm_hidden_states)
        return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)


class DimoWanTransformer(WanTransformer3DModel):
    """Wan2.1 DiT with 3DiMo motion conditioning. `in_channels` counts the DiT input WITHOUT motion channels
    (16 noisy latent + 4 mask + 16 reference = 36 for 3DiMo; 16 for a pure T2V stock model)."""

    _no_split_modules = ["DimoWanTransformerBlock", "WanTransformerBlock"]
    _repeated_blocks = ["DimoWanTransformerBlock", "WanTransformerBlock"]
    _keep_in_fp32_modules = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "norm_motion"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        # --- 3DiMo ---
        motion_conditioning: str = "cross_attention",
        motion_token_dim: int = 512,
        num_motion_tokens: int = 10,
        motion_attention: str = "latent_frame",
        temporal_compression: int = 4,
        motion_channels: int = 16,
    ):
        super().__init__(patch_size, num_attention_heads, attention_head_dim, in_channels, out_channels, text_dim,
                         freq_dim, ffn_dim, num_layers, cross_attn_norm, qk_norm, eps, image_dim, added_kv_proj_dim,
                         rope_max_seq_len, pos_embed_seq_len)
        if motion_conditioning not in MOTION_CONDITIONINGS:
            raise ValueError(f"motion_conditioning must be one of {MOTION_CONDITIONINGS}")
        if motion_attention not in MOTION_ATTENTIONS:
            raise ValueError(f"motion_attention must be one of {MOTION_ATTENTIONS}")
        inner_dim = num_attention_heads * attention_head_dim
        # A learned "no motion" token set: replaces the motion tokens under motion dropout / for motion CFG.
        self.null_motion_tokens = nn.Parameter(torch.zeros(num_motion_tokens, motion_token_dim))
        if motion_conditioning == "cross_attention":
            self.blocks = nn.ModuleList([
                DimoWanTransformerBlock(inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps,
                                        added_kv_proj_dim)
                for _ in range(num_layers)
            ])
            self.motion_embedder = PixArtAlphaTextProjection(motion_token_dim, inner_dim, act_fn="gelu_tanh")
            self.motion_slot_embed = nn.Parameter(torch.zeros(num_motion_tokens, inner_dim))
        else:
            chunk = temporal_compression * num_motion_tokens * motion_token_dim
            self.motion_to_channels = nn.Linear(chunk, motion_channels)
            self.patch_embedding = nn.Conv3d(in_channels + motion_channels, inner_dim, kernel_size=patch_size,
                                             stride=patch_size)
        self.init_motion_weights()

    # ------------------------------------------------------------------ motion parameters
    def motion_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if "motion" in n]

    @torch.no_grad()
    def init_motion_weights(self):
        """(Re-)initialise every new 3DiMo weight; stock weights are untouched (used after loading stock weights)."""
        nn.init.normal_(self.null_motion_tokens, std=0.02)
        if self.config.motion_conditioning == "cross_attention":
            for block in self.blocks:
                block.reset_motion_parameters()
            for m in self.motion_embedder.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
            nn.init.normal_(self.motion_slot_embed, std=0.02)
        else:
            self.motion_to_channels.reset_parameters()
            self.patch_embedding.weight[:, self.config.in_channels:].zero_()  # motion channels start silent

    def apply_motion_dropout(self, motion_tokens: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """Replace the tokens of clips with drop[b] == True by the learned null tokens (all frames)."""
        if drop is None:
            return motion_tokens
        null = self.null_motion_tokens.to(motion_tokens.dtype).expand_as(motion_tokens)
        return torch.where(drop.view(-1, 1, 1, 1), null, motion_tokens)

    def null_motion(self, batch_size: int, num_frames: int) -> torch.Tensor:
        return self.null_motion_tokens.expand(batch_size, num_frames, -1, -1)

    def _frame_chunks(self, motion_tokens: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
        """(B, T, K, D) -> (B, F, c, K, D) with T = 1 + c(F-1); frame 0 is repeated c times to fill chunk 0."""
        c = self.config.temporal_compression
        T = motion_tokens.shape[1]
        if T != 1 + c * (num_latent_frames - 1):
            raise ValueError(f"{T} driving frames do not match {num_latent_frames} latent frames "
                             f"(need T = 1 + {c} * (F - 1))")
        first = motion_tokens[:, :1].expand(-1, c, -1, -1)
        return rearrange(torch.cat([first, motion_tokens[:, 1:]], 1), "b (f c) k d -> b f c k d", c=c)

    def embed_motion(self, motion_tokens: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
        """(B, T, K, Dm) -> motion context (B*F, c*K, dim) in latent_frame mode, (B, T*K, dim) in full mode."""
        B, T, K, _ = motion_tokens.shape
        x = self.motion_embedder(motion_tokens.to(self.dtype))
        frame_pos = get_1d_sincos_pos_embed_from_grid(x.shape[-1], torch.arange(T, device=x.device), "pt")
        x = x + self.motion_slot_embed.to(x.dtype) + frame_pos.to(x.dtype)[None, :, None]
        if self.config.motion_attention == "full":
            return x.flatten(1, 2)
        return rearrange(self._frame_chunks(x, num_latent_frames), "b f c k d -> (b f) (c k) d")

    def motion_channel_maps(self, motion_tokens: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
        """channel_concat variant: (B, T, K, Dm) -> (B, motion_channels, F, h, w) broadcast over space."""
        B, _, F, h, w = latents.shape
        if motion_tokens is None:
            return latents.new_zeros(B, self.config.motion_channels, F, h, w)
        chunks = self._frame_chunks(motion_tokens.to(self.dtype), F).flatten(2)  # (B, F, c*K*D)
        maps = self.motion_to_channels(chunks)  # (B, F, C)
        return rearrange(maps, "b f c -> b c f 1 1").expand(-1, -1, -1, h, w).to(latents.dtype)

    # ------------------------------------------------------------------ forward
    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        motion_tokens: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ):
        """hidden_states (B, in_channels, F, h, w); timestep (B,) in [0, 1000]; encoder_hidden_states (B, L, text_dim);
        motion_tokens (B, T, K, motion_token_dim) with T = 1 + 4(F-1) (None: no motion, i.e. the stock model)."""
        cfg = self.config
        if cfg.added_kv_proj_dim is not None:  # I2V-14B: the 512-token split in WanAttnProcessor
            if encoder_hidden_states_image is None:
                raise ValueError("this config has image cross-attention (I2V): pass encoder_hidden_states_image")
            if encoder_hidden_states.shape[1] != WAN_TEXT_LEN:
                raise ValueError(f"I2V models need text padded to exactly {WAN_TEXT_LEN} tokens "
                                 f"(got {encoder_hidden_states.shape[1]}): see pad_text_embeddings")
        motion_context = None
        if cfg.motion_conditioning == "channel_concat":
            hidden_states = torch.cat([hidden_states, self.motion_channel_maps(motion_tokens, hidden_states)], 1)
        elif motion_tokens is not None:
            motion_context = self.embed_motion(motion_tokens, hidden_states.shape[2] // cfg.patch_size[0])

        # ---- below: the stock WanTransformer3DModel.forward, with motion_context handed to every block ----
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = cfg.patch_size
        post_f, post_h, post_w = num_frames // p_t, height // p_h, width // p_w

        rotary_emb = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        if timestep.ndim == 2:  # per-token timesteps (Wan2.2 TI2V)
            ts_seq_len = timestep.shape[1]
            timestep = timestep.flatten()
        else:
            ts_seq_len = None
        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len)
        timestep_proj = timestep_proj.unflatten(2 if ts_seq_len is not None else 1, (6, -1))
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        extra = (motion_context,) if motion_context is not None else ()
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, *extra)
            else:
                hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, *extra)

        if temb.ndim == 3:
            shift, scale = (self.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_size, post_f, post_h, post_w, p_t, p_h, p_w, -1)
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    # ------------------------------------------------------------------ loading stock Wan weights
    @classmethod
    def from_stock_pretrained(cls, pretrained_path: str, subfolder: str | None = None,
                              torch_dtype: torch.dtype | None = None, **motion_args) -> DimoWanTransformer:
        """Build from a local diffusers Wan2.1 transformer folder (e.g. Wan2.1-T2V-1.3B-Diffusers/transformer).

        `from_config(stock_cfg | motion_args)` with init skipped, stock weights loaded with strict=False; only
        motion weights may be missing (they are then initialised; asserted). If the stock patch embedding has fewer
        input channels (T2V: 16 vs 36 with reference + mask), the extra input channels are zero-filled, so at
        init the model still equals the stock one. `model.loading_info` records what was new or adapted.
        """
        folder = os.path.join(pretrained_path, subfolder) if subfolder else pretrained_path
        stock_cfg = dict(WanTransformer3DModel.load_config(folder))
        cfg = {k: v for k, v in stock_cfg.items() if not k.startswith("_")}
        cfg.update(motion_args)
        with no_init_weights():  # stock weights get overwritten anyway: skip the (slow at 14B) random init
            model = cls.from_config(cfg)
        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {folder}")
        state = {}
        for f in files:
            state.update(load_file(f))
        adapted = []
        key = "patch_embedding.weight"
        want = model.patch_embedding.weight.shape
        if state[key].shape != want:
            if state[key].shape[1] > want[1] or state[key].shape[0] != want[0]:
                raise ValueError(f"cannot adapt {key} {tuple(state[key].shape)} -> {tuple(want)}")
            w = state[key].new_zeros(want)
            w[:, : state[key].shape[1]] = state[key]
            state[key] = w
            adapted.append(key)
        missing, unexpected = model.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if "norm_added_q" not in k]  # stock diffusers ignores these too
        not_motion = [k for k in missing if "motion" not in k]
        if unexpected or not_motion:
            raise RuntimeError(f"stock checkpoint mismatch: missing non-motion {not_motion}, unexpected {unexpected}")
        model.init_motion_weights()  # the new weights were skipped by no_init_weights
        model.loading_info = {"missing_motion": sorted(missing), "adapted": adapted, "files": files}
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        logger.info("loaded stock Wan weights from %s; %d new motion tensors; adapted %s", folder, len(missing),
                    adapted)
        return model


def pad_text_embeddings(embeddings: torch.Tensor, length: int = WAN_TEXT_LEN) -> torch.Tensor:
    """Zero-pad / truncate (B, L, D) text embeddings to `length` tokens (Wan's convention; I2V needs 512)."""
    B, L, D = embeddings.shape
    if L >= length:
        return embeddings[:, :length]
    return torch.cat([embeddings, embeddings.new_zeros(B, length - L, D)], dim=1)


def stock_param_count(config: dict) -> int:
    """Parameters of a stock WanTransformer3DModel with this config (meta device, nothing allocated)."""
    with torch.device("meta"):
        m = WanTransformer3DModel(**{k: v for k, v in config.items() if k in _STOCK_KEYS})
    return sum(math.prod(p.shape) for p in m.parameters())


_STOCK_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
               "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim",
               "added_kv_proj_dim", "rope_max_seq_len", "pos_embed_seq_len")
