"""LoRA on the generator's Wan layers (`training.model.lora`), through peft via diffusers' `PeftAdapterMixin`.

Low-rank adapters wrap the chosen linears of the stock Wan blocks (self-attention `attn1`, text/image
cross-attention `attn2`, feed-forward `ffn`); the rest of the Wan DiT is frozen. What 3DiMo adds trains in full:
the generator's motion modules (motion embedder, per-slot embedding, null tokens, every block's `norm_motion` /
`attn_motion`; the patch embedding too under channel concatenation, whose motion input channels are new) and
every part outside the generator (motion encoders, geometric decoder, text projection).

A model with adapters saves merged (`DimoModel.save_pretrained` calls `merged`): the diffusers-layout folder of a
plain model, so the registry, inference and every later stage load it unchanged. The adapter alone is saved next
to it in peft's layout (`adapter_config.json`, `adapter_model.safetensors`) for users who want the low-rank
delta itself; alone it does not make the model (the 3DiMo parts trained in full are only in the merged folder).
"""

from __future__ import annotations

import logging
import math
import os

import torch.nn as nn
from accelerate import init_empty_weights
from safetensors.torch import save_file

log = logging.getLogger(__name__)

SPEC_KEYS = ("rank", "alpha", "target_modules", "dropout")
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the Wan attention projections (attn1 and attn2)
OWN_MODULES = r".*motion.*"  # the generator's 3DiMo modules (names hold "motion"): never adapted, trained in full
ADAPTER_FOLDER = "generator_lora"  # DimoModel.save_pretrained writes the adapter alone here (peft's layout)


def lora_config(spec: dict):
    """`training.model.lora` -> peft's LoraConfig: {rank, alpha (default rank), target_modules (module-name
    suffixes inside the generator, default the attention projections), dropout (default 0)}."""
    from peft import LoraConfig  # imported on use: peft pulls in transformers (seconds)

    unknown = set(spec) - set(SPEC_KEYS)
    if unknown or "rank" not in spec:
        raise ValueError(f"training.model.lora: needs rank, may have {', '.join(SPEC_KEYS[1:])}; "
                         f"got {sorted(spec)}")
    return LoraConfig(r=int(spec["rank"]), lora_alpha=spec.get("alpha", spec["rank"]),
                      target_modules=list(spec.get("target_modules", DEFAULT_TARGETS)),
                      lora_dropout=float(spec.get("dropout", 0.0)), exclude_modules=OWN_MODULES)


def own_generator_parameter_names(generator: nn.Module) -> set[str]:
    """Generator parameters 3DiMo adds (trained in full beside the adapters)."""
    names = set(generator.motion_parameter_names())
    if generator.config.motion_conditioning == "channel_concat":  # its extra input channels carry the motion
        names |= {n for n, _ in generator.patch_embedding.named_parameters(prefix="patch_embedding")}
    return names


def add_adapters(model: nn.Module, spec: dict) -> None:
    """Wrap the generator's target linears in LoRA adapters; freeze the rest of the Wan DiT, train everything
    3DiMo adds in full (see the module docstring)."""
    generator = model.generator
    generator.add_adapter(lora_config(spec))
    model.lora_spec = dict(spec)  # the resume checkpoint records it, so the converter can rebuild the adapters
    own = own_generator_parameter_names(generator)
    for name, param in generator.named_parameters():
        param.requires_grad_(".lora_" in name or name in own)
    for name, part in model.named_children():
        if name != "generator":
            part.requires_grad_(True)
    counts = parameter_counts(model)
    log.info("LoRA rank %s on %d generator linears: %s trainable (%s in adapters), %s frozen", spec["rank"],
             len(adapted_layers(generator)), f"{counts['trainable']:,}", f"{counts['adapter']:,}",
             f"{counts['frozen']:,}")


def adapted_layers(module: nn.Module) -> dict:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def has_adapters(generator: nn.Module) -> bool:
    """diffusers' flag, set by `add_adapter` (and cleared by `unload_lora`): no peft import needed to ask."""
    return bool(getattr(generator, "_hf_peft_config_loaded", False))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable, frozen and adapter parameter counts (works on the meta device: shapes only)."""
    counts = {"trainable": 0, "frozen": 0, "adapter": 0}
    for name, param in model.named_parameters():
        n = math.prod(param.shape)
        counts["trainable" if param.requires_grad else "frozen"] += n
        counts["adapter"] += n if ".lora_" in name else 0
    return counts


def merged(generator: nn.Module) -> nn.Module:
    """A plain generator (no adapter layers) whose adapted linears hold W + scale * B A, as peft's merge
    computes it (`get_delta_weight`); the trained generator is left as it is. Every other tensor is shared, not
    copied, so the extra memory is the adapted weights only."""
    layers = adapted_layers(generator)
    state = {}
    for name, layer in layers.items():
        base = layer.get_base_layer()
        weight = base.weight.detach()
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A and adapter not in layer.merged_adapters:
                weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        state[f"{name}.weight"] = weight
        if base.bias is not None:
            state[f"{name}.bias"] = base.bias.detach()
    inside = tuple(f"{name}." for name in layers)
    state.update({k: v for k, v in generator.state_dict().items() if not k.startswith(inside)})
    with init_empty_weights(include_buffers=False):  # no random init of weights that are assigned next
        # without the private keys: `_use_default_values` would make from_config drop the Wan sizes
        plain = type(generator).from_config({k: v for k, v in generator.config.items() if not k.startswith("_")})
    plain.load_state_dict(state, strict=True, assign=True)
    return plain


def save_adapter(generator: nn.Module, directory: str) -> None:
    """The adapter alone, as peft's `PeftModel.save_pretrained` lays it out."""
    from peft.utils import get_peft_model_state_dict

    os.makedirs(directory, exist_ok=True)
    generator.peft_config["default"].save_pretrained(directory)
    save_file(get_peft_model_state_dict(generator), os.path.join(directory, "adapter_model.safetensors"))
