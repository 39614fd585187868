"""LoRA through peft (`training.model.lora`): adapters on the Wan linears of the generator, the 3DiMo parts in
full, the rest frozen; a LoRA stage trains, resumes exactly, registers merged and reloads to the same outputs.

A tiny stage trains for real (DeepSpeed on CPU, the MLflow registry on a temp sqlite store), on the synthetic
latent cache of `tests/test_checkpoints.py`.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from dimo.models import DimoModel, LatentCodec, configs, lora
from dimo.training import convert, registry
from dimo.training.batches import PairBatches
from dimo.training.model_init import configure_for_stage
from dimo.training.nodes import register_stage, run_stage
from tests.conftest import PROJECT_ROOT
from tests.test_checkpoints import MANIFEST, TEXT_DIM, _register_base, store, tiny_stage_inputs  # noqa: F401

SPEC = {"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj"],
        "dropout": 0.0}
TOLERANCE = 1e-5  # fp32: W + B A merged vs the two paths of the adapter layer


def _with_lora(params: dict, spec: dict | None = SPEC) -> dict:
    params = copy.deepcopy(params)
    params["model"]["lora"] = spec
    return params


def _lora_model(variant: str = "full", seed: int = 0) -> DimoModel:
    torch.manual_seed(seed)
    model = DimoModel(configs.get("tiny", variant=variant, text_in_dim=TEXT_DIM))
    _, _, params = tiny_stage_inputs(None)
    configure_for_stage(model, params["stages"]["stage1"], _with_lora(params))
    return model


def _fixed_batch() -> dict:
    pairs, cache, _ = tiny_stage_inputs(None)
    batches = PairBatches(pairs[pairs["stage"] == "stage1"], cache, {"reconstruction": 1.0}, 1, 0)
    return batches.batch(0, 0, 0)


@torch.no_grad()
def _velocity(model: DimoModel, batch: dict) -> torch.Tensor:
    """The whole network on a fixed input: motion encoders, text projection, generator (eval: no augmentation)."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    x0 = batch["target_latents"]
    noise, t = torch.randn(x0.shape, generator=g), torch.full((x0.shape[0],), 0.6)
    z = model.encode_motion(batch["driving_frames"], batch["hand_keypoints"], batch["wrist_keypoints"])
    text = model._text(batch["text_embeddings"], batch["text_mask"])
    return model.predict_velocity(model.flow.noisy(x0, noise, t), model.flow.model_timestep(t),
                                  batch["reference_latents"], text, z)


def test_only_the_adapters_and_the_3dimo_parts_train():
    model = _lora_model()
    gen = model.generator
    adapted = lora.adapted_layers(gen)
    blocks = gen.config.num_layers
    wan_linears = [f"blocks.{b}.{attn}.{m}" for b in range(blocks) for attn in ("attn1", "attn2")
                   for m in ("to_q", "to_k", "to_v", "to_out.0")]
    wan_linears += [f"blocks.{b}.ffn.net.0.proj" for b in range(blocks)]
    assert sorted(adapted) == sorted(wan_linears)
    assert not any("motion" in name for name in adapted), "the motion cross-attention must train in full"
    for name, param in gen.named_parameters():
        wanted = ".lora_" in name or "motion" in name
        assert param.requires_grad == wanted, name
    for name, part in model.named_children():
        if name != "generator":
            assert all(p.requires_grad for p in part.parameters()), name
    counts = lora.parameter_counts(model)
    assert counts["adapter"] > 0 and counts["frozen"] == sum(p.numel() for p in model.parameters()
                                                              if not p.requires_grad) > 0
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.parameters() if p.requires_grad}


def test_channel_concat_keeps_its_motion_input_channels_trainable_and_a_bad_spec_is_refused():
    model = _lora_model("channel_concat")
    assert model.generator.patch_embedding.weight.requires_grad  # its motion channels start at zero
    assert model.generator.motion_to_channels.weight.requires_grad
    assert not model.generator.proj_out.weight.requires_grad
    with pytest.raises(ValueError, match="needs rank"):
        lora.lora_config({"ranks": 4})


def test_null_lora_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = DimoModel(configs.get("tiny", text_in_dim=TEXT_DIM))
    _, _, params = tiny_stage_inputs(None)
    assert params["model"]["lora"] is None  # every environment configures it (null: full fine-tuning)
    configure_for_stage(model, params["stages"]["stage1"], params)
    assert not lora.has_adapters(model.generator) and all(p.requires_grad for p in model.parameters())


def test_lora_training_lowers_the_loss_on_a_fixed_batch_and_moves_only_trainable_weights():
    model = _lora_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = _fixed_batch()
    g = torch.Generator().manual_seed(1)
    noise, t = torch.randn(batch["target_latents"].shape, generator=g), torch.tensor([0.5])
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    model.train()
    losses = []
    for step in range(30):
        out = model.training_losses(batch, step, generator=torch.Generator().manual_seed(2), noise=noise, t=t)
        optimizer.zero_grad()
        out["diffusion_loss"].backward()
        optimizer.step()
        losses.append(float(out["diffusion_loss"].detach()))
    assert losses[-1] < 0.9 * losses[0], losses  # measured: 2.37 -> 1.91 (random latents, tiny model)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(float(layer.lora_B["default"].weight.abs().max()) > 0
               for layer in lora.adapted_layers(model.generator).values()), "an adapter did not train"


def test_a_lora_stage_resumes_exactly_registers_merged_and_reloads_to_the_same_outputs(store):  # noqa: F811
    pairs, cache, params = tiny_stage_inputs(store / "ckpt", steps=2)
    params = _with_lora(params)
    _register_base(0)
    zero2 = json.loads((PROJECT_ROOT / "conf" / "deepspeed" / "zero2.json").read_text())  # the default engine
    model, _ = run_stage("stage1", pairs, cache, None, MANIFEST, zero2, params)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert any(".lora_A." in k for k in trained)  # the DeepSpeed checkpoint holds the adapted module's keys

    # a run killed after step 1 resumes (adapters in the model) to exactly the uninterrupted weights
    ckpt = store / "ckpt" / "stage1"
    shutil.rmtree(ckpt / "step-00000002")
    (ckpt / "latest").write_text("step-00000001")
    resumed, summary = run_stage("stage1", pairs, cache, None, MANIFEST, zero2, params)
    assert summary["resumed_at"] == 1
    assert all(torch.equal(v, trained[k]) for k, v in resumed.state_dict().items()), "resumed weights differ"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow: "Add type hints to the `predict` method"
        with mlflow.start_run():
            register_stage("stage1", model, LatentCodec.tiny(), MANIFEST, {"steps": 2}, params)
    assert lora.has_adapters(model.generator), "registering must not change the trained model"
    reloaded = registry.load_model("models:/dimo@stage1")
    assert not lora.has_adapters(reloaded.generator)

    batch = _fixed_batch()
    with_adapters, merged = _velocity(model, batch), _velocity(reloaded, batch)
    assert torch.allclose(merged, with_adapters, atol=TOLERANCE, rtol=0), (merged - with_adapters).abs().max()
    model.generator.disable_adapters()  # what a registration without the merge would hold: the base weights
    unmerged = _velocity(model, batch)
    model.generator.enable_adapters()
    assert (unmerged - with_adapters).abs().max() > 100 * TOLERANCE, "the adapters did not change the outputs"

    # the adapter alone, in peft's layout, holds the trained low-rank weights
    folder = registry.download("models:/dimo@stage1") / "dimo" / lora.ADAPTER_FOLDER
    adapter = load_file(folder / "adapter_model.safetensors")
    assert (folder / "adapter_config.json").is_file() and adapter
    assert all(torch.equal(v, trained[f"generator.{k.replace('.weight', '.default.weight')}"])
               for k, v in adapter.items())

    # the converter rebuilds the adapters from the checkpoint's lora.json and writes the same merged model
    converted = DimoModel.from_pretrained(str(convert.convert(ckpt, store / "converted")))
    assert not lora.has_adapters(converted.generator)
    assert torch.allclose(_velocity(converted, batch), with_adapters, atol=TOLERANCE, rtol=0)
