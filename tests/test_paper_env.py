"""The paper environment: no toy pretraining, the ablation starts from the Wan folder, every weight folder is
checked before a run, and Wan2.1-I2V's CLIP image embeddings go from preprocess through the cache to the generator."""

from __future__ import annotations

import json
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader

from dimo import preflight, weight_folders
from dimo.training import stages
from tests.conftest import PROJECT_ROOT, run_cli, smoke_project


def _params(env: str) -> dict:
    return OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), env=env, base_env="base",
                             default_run_env="local")["parameters"]


TINY_GEN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
                text_dim=32, freq_dim=32, ffn_dim=48, num_layers=1, cross_attn_norm=True, rope_max_seq_len=64)


def fake_wan_folder(root, text_dim: int = 32, in_channels: int = 16, d_model: int = 384, clip_width: int = 16):
    """A Wan2.1 diffusers folder with tiny random parts, saved the way the real one is laid out."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from tokenizers import Tokenizer, models
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    WanTransformer3DModel(**{**TINY_GEN, "text_dim": text_dim, "in_channels": in_channels}).save_pretrained(
        root / "transformer")
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).save_pretrained(root / "vae")
    UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
                     ).save_pretrained(root / "text_encoder")
    (root / "tokenizer").mkdir()
    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(root / "tokenizer/tokenizer.json"))
    (root / "tokenizer/tokenizer_config.json").write_text("{}")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=clip_width, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(
        root / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "image_processor")
    return root


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return fake_wan_folder(tmp_path_factory.mktemp("wan") / "Wan2.1-fake")


def _copy(wan, tmp_path):
    return shutil.copytree(wan, tmp_path / "wan")


def _rewrite(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))


# ------------------------------------------------------------------ the weight-folder check
def test_a_fake_wan_folder_passes_every_check(wan):
    gen = {**TINY_GEN, "in_channels": 36}  # ours: 16 latent + 4 mask + 16 reference channels
    assert weight_folders.check_transformer(wan, gen, "tiny") is None
    assert weight_folders.check_vae(wan) is None
    assert weight_folders.check_text_encoder(wan, 384, "tiny") is None
    assert weight_folders.check_image_encoder(wan, 16, "tiny-i2v") is None
    params = {"training": {"model": {"config": "tiny", "variant": "full"}}}
    assert preflight.model_problem(f"wan:{wan}", params) is None
    pre = {"codec": {"pretrained_path": str(wan)}, "text_encoder": {"kind": "umt5", "path": str(wan)},
           "image_encoder": {"path": str(wan)}}
    assert weight_folders.preprocess_problems(pre, {**gen, "image_dim": 16}, 384, "tiny-i2v") == []


def test_a_missing_file_or_a_mismatch_names_the_folder_in_one_line(wan, tmp_path):
    params = {"training": {"model": {"config": "tiny", "variant": "full"}}}
    root = _copy(wan, tmp_path)
    problems = []
    next(root.glob("transformer/*.safetensors")).unlink()
    problems.append(preflight.model_problem(f"wan:{root}", params))
    assert problems[-1] == (f"Wan folder {root}/transformer",
                            "no *.safetensors weights, the stock Wan transformer")
    (root / "tokenizer/tokenizer.json").unlink()
    assert weight_folders.check_text_encoder(root, 384, "tiny")[0] == str(root / "tokenizer")
    (root / "image_processor/preprocessor_config.json").unlink()
    assert weight_folders.check_image_encoder(root, 16, "x")[0] == str(root / "image_processor")

    root = shutil.copytree(wan, tmp_path / "wan_text")
    _rewrite(root / "transformer", text_dim=48)
    assert preflight.model_problem(f"wan:{root}", params) == (
        f"Wan folder {root}/transformer", "config.json text_dim 48, training.model 'tiny' needs 32")
    root = shutil.copytree(wan, tmp_path / "wan_in")
    _rewrite(root / "transformer", in_channels=48)
    assert "in_channels 48" in preflight.model_problem(f"wan:{root}", params)[1]
    assert weight_folders.check_text_encoder(wan, 4096, "wan2.1-t2v-1.3b") == (
        str(wan / "text_encoder"), "config.json d_model 384, training.model 'wan2.1-t2v-1.3b' reads 4096-wide text")
    assert "image_dim None" in weight_folders.check_transformer(wan, {**TINY_GEN, "in_channels": 36, "image_dim": 16},
                                                              "tiny-i2v")[1]  # a T2V folder for an I2V model

    line = preflight.message("train_stage1", [preflight.Problem(*problems[0], None)], [], "paper", set())
    assert "\n" not in line and str(root.parent / "wan" / "transformer") in line


def test_paper_train_stage1_without_a_wan_folder_fails_in_seconds_naming_it(tmp_path):
    project = smoke_project(tmp_path / "project")
    t0 = time.perf_counter()
    done = run_cli(["kedro", "run", "--env=paper", "--pipelines=train_stage1"], project,
                   env={"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}, timeout=300)
    seconds = time.perf_counter() - t0
    lines = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "Wan folder /models/Wan2.1-T2V-1.3B-Diffusers (no such folder" in lines[0]
    assert "pretrain_generator" not in lines[0]  # switched off in paper: not a pipeline to run first
    print(f"kedro run --env=paper --pipelines=train_stage1 failed after {seconds:.1f} s")


def test_the_cli_hook_names_the_wan_folder_before_kedro_imports_torch(tmp_path):
    """The fast path: the CLI hook reads parameters alone; torch, diffusers and the pipelines stay unimported."""
    code = """
import sys
from pathlib import Path
from kedro.framework.startup import bootstrap_project
from dimo.cli_hooks import cli_hooks
meta = bootstrap_project(Path(sys.argv[1]))
try:
    cli_hooks.before_command_run(meta, ["run", "--env=paper", "--pipelines=train_stage1"])
except SystemExit as e:
    print("exit", e.code, sorted(m for m in ("torch", "diffusers", "deepspeed", "dimo.pipelines") if m in sys.modules))
"""
    done = run_cli(["python", "-c", code, str(PROJECT_ROOT)], PROJECT_ROOT, timeout=120)
    assert "exit 2 []" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "train_stage1 cannot start: missing Wan folder /models/Wan2.1-T2V-1.3B-Diffusers" in done.stderr
    params = _params("paper")  # the other pipelines with weight folders, and one without
    assert preflight.weight_folder_problems(params, ["ablation"])[0].what.startswith("Wan folder /models/")
    assert preflight.weight_folder_problems(params, ["ingest"]) == []
    assert preflight.weight_folder_problems(_params("smoke"), ["__default__"]) == []


# ------------------------------------------------------------------ the paper chain
def test_the_paper_chain_has_no_pretrain_stage_and_the_ablation_starts_from_wan():
    from dimo.pipelines.ablation.nodes import variant_params
    from dimo.pipelines.preprocess.nodes import build_training_pairs
    from dimo.training.nodes import register_stage, run_stage

    params = _params("paper")
    training = params["training"]
    assert list(training["stages"]) == [s.key for s in stages.STAGES]  # the key stays, switched off
    assert stages.enabled_stages(training["stages"]) == stages.PAPER_STAGES
    assert stages.enabled_stages(_params("base")["training"]["stages"])[0] == "pretrain"
    wan = training["stages"]["stage1"]["init"]
    assert wan.startswith("wan:") and params["ablation"]["base"] == wan
    for name in params["ablation"]["variants"]:
        assert variant_params(name, training, params["ablation"])["stages"]["stage1"]["init"] == wan
    assert "dimo@base" not in json.dumps(params)

    model, summary = run_stage("pretrain", pd.DataFrame(), {}, None, {}, {}, training)  # no data needed
    assert isinstance(model, stages.DisabledStage) and summary["disabled"]
    assert register_stage("pretrain", model, None, {}, summary, training)["disabled"] is True
    assert list(stages.run_chain(["pretrain"], pd.DataFrame(), {}, None, {}, {}, training)) == []
    clips = pd.DataFrame({"clip_id": ["a"], "split": ["train"]})
    with pytest.raises(ValueError, match="stage1"):  # pretrain is passed over; stage1 needs single-view clips
        build_training_pairs(clips.assign(supervision="multi_view", group_id="g", view_id=0), training)


def test_a_switched_off_stage_writes_a_record_for_dvc(tmp_path):
    from dimo.datasets import DimoModelDataset

    DimoModelDataset(str(tmp_path / "pretrain")).save(stages.DisabledStage("pretrain"))
    assert json.loads((tmp_path / "pretrain" / "disabled.json").read_text())["stage"] == "pretrain"


# ------------------------------------------------------------------ CLIP image embeddings, cache -> generator
def test_clip_embeddings_are_cached_and_reach_the_i2v_generator(wan, tmp_path):
    from dimo.labelling import label_format
    from dimo.models import DimoModel, LatentCodec, configs, text_encoder
    from dimo.models.generator import WAN_TEXT_LEN
    from dimo.pipelines.preprocess.nodes import ImageEncoder, batch_entries
    from dimo.training.batches import PairBatches

    T, H, W = 5, 32, 32
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8) for _ in range(2)]
    rows = []
    for i in range(2):
        label_format.save_label(tmp_path / f"{i}.npz", label_format.make_label(T, "anny", height=H, width=W))
        rows.append(SimpleNamespace(clip_id=f"c{i}", caption="a person waves", label_path=str(tmp_path / f"{i}.npz")))
    images = ImageEncoder(str(wan), torch.device("cpu"))
    texts = text_encoder.from_spec({"kind": "minilm", "max_length": 8})
    codec = LatentCodec.tiny()
    batch = batch_entries(rows, frames, codec, texts, 32, images)
    single = [batch_entries([r], [f], codec, texts, 32, images)[0] for r, f in zip(rows, frames, strict=True)]
    assert batch[0]["image_embeddings"].shape == (17, 16)  # 1 + (32/8)^2 tokens, the CLIP width
    for b, s in zip(batch, single, strict=True):  # a batch of clips encodes like the clips one by one
        assert set(b) == set(s)
        assert all(torch.allclose(b[k].float(), s[k].float(), atol=1e-4) for k in b)
    # the diffusers WanImageToVideoPipeline recipe: processor, then the penultimate hidden state
    pixels = images.processor(images=[frames[1][0]], return_tensors="pt").pixel_values
    expected = images.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][0]
    assert torch.allclose(batch[1]["image_embeddings"], expected)

    for entry in batch:  # the I2V processor splits text from image tokens at exactly 512 text tokens
        entry["text_embeddings"] = torch.cat([entry["text_embeddings"], torch.zeros(WAN_TEXT_LEN - 8, 384)])
        entry["text_mask"] = torch.cat([entry["text_mask"], torch.zeros(WAN_TEXT_LEN - 8, dtype=torch.uint8)])
    pairs = pd.DataFrame({"kind": ["cross_view"], "driving_clip_id": ["c0"], "target_clip_id": ["c1"]})
    example = PairBatches(pairs, {"c0": batch[0], "c1": batch[1]}, {"cross_view": 1.0}, 1, 0).batch(0)
    assert example["image_embeddings"].shape == (1, 17, 16)
    assert torch.equal(example["image_embeddings"][0], batch[1]["image_embeddings"])  # the target's first frame
    cfg = configs.get("tiny", generator={"image_dim": 16, "added_kv_proj_dim": 24})
    model = DimoModel(cfg)
    losses = model.training_losses(example, 0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.generator.condition_embedder.image_embedder.ff.net[0].proj.weight.grad.abs().sum() > 0
    without = {k: v for k, v in example.items() if k != "image_embeddings"}
    with pytest.raises(ValueError, match="pass encoder_hidden_states_image"):
        model.training_losses(without, 0, generator=torch.Generator().manual_seed(0))
