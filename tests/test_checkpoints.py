"""Resume checkpoints that cannot go stale (the starting model and the global step offset are part of what a
checkpoint must agree with), and the DeepSpeed -> model-folder converter on a 2-rank ZeRO-2 and ZeRO-3 run.

A tiny stage trains for real here (DeepSpeed engine on CPU, the MLflow registry on a temp sqlite store), on a
synthetic latent cache of the latent cache's format. This file is also the 2-rank training script that the
converter test launches under `deepspeed --num_gpus 2 --module tests.test_checkpoints`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import socket
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader

from dimo.models import DimoModel, LatentCodec, configs
from dimo.training import checkpoints, registry
from dimo.training.nodes import run_stage
from tests.conftest import PROJECT_ROOT, run_cli

TEXT_DIM = 384  # MiniLM, as in the smoke run (32 = the generator width: an empty projection)
SPEC = {"kind": "minilm", "path": None, "max_length": 8}
MANIFEST = {"text_dim": TEXT_DIM, "text_encoder": SPEC}


def _clip(seed: int, frames: int = 17, latent_frames: int = 5) -> dict:
    """One latent-cache entry (preprocess's format) of random content."""
    g = torch.Generator().manual_seed(seed)
    hands = torch.rand(frames, 2, 21, 3, generator=g)
    hands[..., :2] = hands[..., :2] * 20 + 22
    return {"latents": torch.randn(16, latent_frames, 8, 8, generator=g),
            "text_embeddings": torch.randn(8, TEXT_DIM, generator=g), "text_mask": torch.ones(8),
            "driving_frames": torch.randint(0, 256, (frames, 3, 64, 64), generator=g, dtype=torch.uint8),
            "hand_keypoints": hands, "wrist_keypoints": torch.rand(frames, 2, 3, generator=g) * 64,
            "pose_targets": torch.randn(frames, 306, generator=g), "pose_valid": torch.ones(frames, 306)}


def tiny_stage_inputs(checkpoint_dir: Path, steps: int = 2) -> tuple[pd.DataFrame, dict, dict]:
    """(pairs, cache, training params): the smoke training parameters with short stages, reconstruction pairs of
    two clips for every stage, checkpoints kept after each stage."""
    params = copy.deepcopy(OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), env="smoke", base_env="base",
                                             default_run_env="local")["parameters"]["training"])
    params.update(checkpoint_dir=str(checkpoint_dir), checkpoint_every=1, keep_checkpoints=True, sample_steps=0,
                  log_every=1, batch={"global": 2, "micro": 1})
    for stage in params["stages"].values():
        stage.update(steps=steps, mix={"reconstruction": 1.0})
    ids = ["a", "b"]
    pairs = pd.DataFrame([{"kind": "reconstruction", "driving_clip_id": c, "target_clip_id": c, "group_id": c,
                           "stage": s, "split": "train"} for s in params["stages"] for c in ids])
    return pairs, {c: _clip(i) for i, c in enumerate(ids)}, params


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A temp MLflow store as the tracking URI, a temp working folder (the registry's download cache), and a
    single-rank process group environment that is undone afterwards (later subprocesses pick their own port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                           LOCAL_RANK="0").items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("dimo", artifact_location=str(tmp_path / "art")))
    yield tmp_path
    mlflow.set_tracking_uri(previous)


def _register_base(seed: int) -> dict:
    """A fresh tiny model registered as `dimo@base` (a new version each call)."""
    torch.manual_seed(seed)
    model = DimoModel(configs.get("tiny", text_in_dim=TEXT_DIM))
    with mlflow.start_run(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow: "Add type hints to the `predict` method"
        return registry.register(model, LatentCodec.tiny(), SPEC, "dimo", ["base"],
                                 {"stage": "pretrain", "config": "tiny", "variant": "full"})


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_stale_checkpoint_is_refused_and_the_same_start_resumes_exactly(store):
    pairs, cache, params = tiny_stage_inputs(store / "ckpt", steps=2)
    first = _register_base(0)
    model, summary = run_stage("stage1", pairs, cache, None, MANIFEST, {}, params)
    assert summary["resumed_at"] == 0
    trained = _weights(model)
    ckpt = store / "ckpt" / "stage1"
    record = json.loads((ckpt / checkpoints.RESUME_RECORD).read_text())
    assert record["starting_model"] == {"init": "models:/dimo@base", "model": f"models:/dimo/{first['version']}",
                                        "run_id": first["run_id"]}
    assert json.loads((ckpt / "step-00000002" / "dimo_config.json").read_text())["name"] == "tiny"

    # the same start: the finished run resumes at its end, as before (0 steps, the same weights)
    model, summary = run_stage("stage1", pairs, cache, None, MANIFEST, {}, params)
    assert summary["resumed_at"] == 2
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())

    # ... and a run killed after step 1 resumes to exactly the uninterrupted weights
    shutil.rmtree(ckpt / "step-00000002")
    (ckpt / "latest").write_text("step-00000001")
    model, summary = run_stage("stage1", pairs, cache, None, MANIFEST, {}, params)
    assert summary["resumed_at"] == 1
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items()), "resumed weights differ"

    # a new predecessor version: refused, naming the folder, both versions and what to do
    second = _register_base(1)
    with pytest.raises(ValueError) as err:
        run_stage("stage1", pairs, cache, None, MANIFEST, {}, params)
    message = str(err.value)
    assert f"{ckpt} holds a checkpoint (step-00000002) of another stage1 run" in message
    assert f"this run starts from models:/dimo/{second['version']} (run {second['run_id']}), the checkpoint " \
           f"from models:/dimo/{first['version']} (run {first['run_id']})" in message
    assert f"Delete {ckpt} to train stage1 afresh" in message
    assert json.loads((ckpt / checkpoints.RESUME_RECORD).read_text()) == record  # the old record stays

    assert f"(init: models:/dimo/{first['version']} resumes it)" in message

    # the old predecessor, pinned by version as the message says: the same start, so it resumes
    pinned = copy.deepcopy(params)
    pinned["stages"]["stage1"]["init"] = f"models:/dimo/{first['version']}"
    model, summary = run_stage("stage1", pairs, cache, None, MANIFEST, {}, pinned)
    assert summary["resumed_at"] == 2
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_the_record_covers_the_global_step_offset_parameters_data_and_folder_weights(tmp_path):
    pairs, _, params = tiny_stage_inputs(tmp_path / "ckpt")
    start = {"init": "models:/dimo@stage1", "model": "models:/dimo/2", "run_id": "r2"}
    record = checkpoints.resume_record("stage2", params, pairs, start)
    assert record["global_step_offset"] == 2  # stage1's steps
    ckpt = tmp_path / "ckpt" / "stage2"
    checkpoints.check_resumable(ckpt, record)
    (ckpt / "step-00000001").mkdir()
    (ckpt / "latest").write_text("step-00000001")
    checkpoints.check_resumable(ckpt, record)  # the same run: resumable
    renamed = copy.deepcopy(params)
    renamed["stages"]["stage2"]["aliases"] = ["stage2", "candidate"]  # names of the result, not the training
    checkpoints.check_resumable(ckpt, checkpoints.resume_record("stage2", renamed, pairs, start))

    longer = copy.deepcopy(params)
    longer["stages"]["stage1"]["steps"] = 5
    with pytest.raises(ValueError, match=r"this run starts at global step 5, the checkpoint at 2 \(the earlier "
                                         r"stages' steps changed\)"):
        checkpoints.check_resumable(ckpt, checkpoints.resume_record("stage2", longer, pairs, start))
    other_lr = {**params, "lr": 0.5}
    with pytest.raises(ValueError, match=r"its training parameters differ"):
        checkpoints.check_resumable(ckpt, checkpoints.resume_record("stage2", other_lr, pairs, start))
    with pytest.raises(ValueError, match=r"its training pairs differ"):
        checkpoints.check_resumable(ckpt, checkpoints.resume_record("stage2", params, pairs.iloc[1:], start))
    (ckpt / checkpoints.RESUME_RECORD).unlink()
    with pytest.raises(ValueError, match="has no resume record"):
        checkpoints.check_resumable(ckpt, record)

    folder = tmp_path / "wan"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"not trained")
    before = checkpoints.starting_model(f"wan:{folder}")
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"another text encoder")
    assert checkpoints.starting_model(f"wan:{folder}") == before  # only what the generator loads counts
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"new weights")
    after = checkpoints.starting_model(f"wan:{folder}")
    assert after["sha256"] != before["sha256"] and checkpoints.describe(after).startswith(f"wan:{folder} (weights")
    assert checkpoints.starting_model("scratch") == {"init": "scratch"}


# ------------------------------------------------------------------ the converter, on 2 CPU ranks


def _train_on_ranks(out: Path) -> None:
    """Each rank: a tiny `pretrain` stage (from scratch, 2 steps) under ZeRO-3, then under ZeRO-2, each with its own
    checkpoint folder; rank 0 saves the trained weights next to them."""
    for zero in (3, 2):
        torch.manual_seed(0)  # the same fresh model on every rank
        pairs, cache, params = tiny_stage_inputs(out / f"zero{zero}" / "checkpoints", steps=2)
        ds_config = json.loads((PROJECT_ROOT / "conf" / "deepspeed" / f"zero{zero}.json").read_text())
        model, _ = run_stage("pretrain", pairs, cache, None, MANIFEST, ds_config, params)
        if int(os.environ["RANK"]) == 0:
            model.save_pretrained(str(out / f"zero{zero}" / "trained"))


@pytest.mark.slow
def test_converter_turns_two_rank_zero2_and_zero3_checkpoints_into_the_trained_weights(tmp_path):
    out = run_cli(["deepspeed", "--num_gpus", "2", "--master_port", "29747", "--no_local_rank", "--module",
                   "tests.test_checkpoints", "--out", str(tmp_path)], cwd=PROJECT_ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    from dimo.training.convert import convert, main

    for zero in (3, 2):
        ckpt = tmp_path / f"zero{zero}" / "checkpoints" / "pretrain"
        shards = sorted(p.name for p in (ckpt / "step-00000002").iterdir() if "optim_states" in p.name)
        assert len(shards) == 2, shards  # one optimizer shard per rank
        converted = DimoModel.from_pretrained(str(convert(ckpt, tmp_path / f"zero{zero}" / "converted")))
        trained = DimoModel.from_pretrained(str(tmp_path / f"zero{zero}" / "trained")).state_dict()
        state = converted.state_dict()
        assert state.keys() == trained.keys()
        assert all(torch.equal(state[k], trained[k]) for k in state), f"ZeRO-{zero}: converted weights differ"
        start = DimoModel.from_pretrained(str(convert(ckpt, tmp_path / "step1", tag="step-00000001"))).state_dict()
        assert not all(torch.equal(start[k], trained[k]) for k in state)  # an earlier step: other weights
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "zero2" / "checkpoints" / "pretrain"), str(tmp_path / "x"), "--tag", "step-9"])
    assert err.value.code == 2


if __name__ == "__main__":  # one rank of the converter test, under the deepspeed launcher
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    _train_on_ranks(parser.parse_args().out)
