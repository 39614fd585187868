"""The model a training stage starts from: a fresh toy model, a registered alias (possibly of another variant:
its matching weights are transferred), or a stock Wan2.1 folder; and the training knobs the stage sets on it
(condition dropout, the geometric-loss schedule, LoRA adapters: what trains)."""

from __future__ import annotations

import logging

import torch

from dimo.models import DimoModel, configs, lora
from dimo.models.schedules import AnnealSchedule
from dimo.training import handover, registry

log = logging.getLogger(__name__)


def build_model(stage: str, params: dict, manifest: dict) -> DimoModel:
    """The stage's starting weights: a fresh toy model, a registered alias, or a stock Wan2.1 folder."""
    spec = params["model"]
    init = params["stages"][stage]["init"]
    if init == "scratch":
        return build_fresh(spec, manifest, params["seed"])
    if init.startswith("wan:"):
        cfg = configs.get(spec["config"], variant=spec["variant"], **spec.get("overrides", {}))
        return DimoModel.from_stock_pretrained(cfg, init.removeprefix("wan:"))
    model = registry.load_model(handover.resolve_init(init, params))
    got = (model.config.name, model.config.variant)
    if got[0] == spec["config"] and got[1] != spec["variant"] and spec.get("transfer_from_other_variant", False):
        return transfer_weights(model, build_fresh(spec, manifest, params["seed"]))  # ablations: the same base
    if got != (spec["config"], spec["variant"]):
        raise ValueError(f"{stage}: {init} holds a {got[0]!r} model (variant {got[1]!r}) but training.model asks "
                         f"for {spec['config']!r} (variant {spec['variant']!r}); run the earlier stages with the "
                         "same training.model or point init at a matching model")
    return model


def build_fresh(spec: dict, manifest: dict, seed: int) -> DimoModel:
    """A freshly initialised model, the same for the same seed in every process: torch seeds its global RNG from
    the OS at start-up, so an unseeded init differed run to run (issue 14, benchmarks/diag_reproducibility.py)."""
    cfg = configs.get(spec["config"], variant=spec["variant"], **{"text_in_dim": manifest["text_dim"],
                                                                    **spec.get("overrides", {})})
    torch.manual_seed(seed)
    return DimoModel(cfg)


def transfer_weights(source: DimoModel, target: DimoModel) -> DimoModel:
    """Copy every weight whose name and shape agree, e.g. the base generator into an ablation variant whose
    motion pathway differs (channel concatenation, SMPL control, no hand encoder)."""
    src, dst = source.state_dict(), target.state_dict()
    shared = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    for k, v in src.items():  # a wider input layer (channel concatenation appends motion channels): copy the
        w = dst.get(k)         # stock input channels, the appended ones keep their zero init
        if w is not None and k not in shared and w.ndim == v.ndim > 1 and w.shape[0] == v.shape[0] \
                and w.shape[2:] == v.shape[2:] and w.shape[1] > v.shape[1]:
            shared[k] = torch.cat([v, w[:, v.shape[1]:]], 1)
    target.load_state_dict(shared, strict=False)
    fresh = sorted({k.split(".")[0] + "." + k.split(".")[1] for k in set(dst) - set(shared)})
    log.info("%s: %d of %d tensors from the %s model; freshly initialised: %s", target.config.variant, len(shared),
             len(dst), source.config.variant, ", ".join(fresh) or "none")
    return target


def configure_for_stage(model: DimoModel, stage: dict, params: dict) -> None:
    """Training knobs that belong to the stage, not to the saved model."""
    model.config.p_drop_text = params["p_drop_text"]
    model.config.p_drop_motion = stage.get("p_drop_motion", params["p_drop_motion"])  # 1.0 = no motion at all
    geo = params["geometric_loss"] if stage.get("geometric_loss", True) else {**params["geometric_loss"], "start": 0.0}
    model.geo_schedule = AnnealSchedule(**geo)
    if params["model"].get("lora"):  # adapters on the Wan layers, 3DiMo parts in full; saved merged
        lora.add_adapters(model, params["model"]["lora"])
    if model.config.gradient_checkpointing:  # real-scale configs: activations of 48K-token clips need it
        model.enable_gradient_checkpointing()
