"""The MTVCrafter-style 4DMoT baseline: its quantizer on known answers, its token layout and save/load, training
that beats the mean pose on held-out motion, label windows, and the pipeline in the smoke chain (MLflow registry)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from dimo.baselines import tokenizer_training
from dimo.baselines.motion_tokenizer import EMAQuantizer, MotionTokenizer, mpjpe_mm
from dimo.labelling import label_format as lf

TINY = {"channels": [8, 16, 16], "frame_down": [2, 2, 1], "code_dim": 16, "codebook_size": 32, "ema_decay": 0.9,
        "reset_every": 20, "commitment": 0.25, "dilation": 3}


def motion(n: int, seed: int, frames: int = 16, joints: int = 23) -> np.ndarray:
    """n windows of one skeleton moving every joint on its own sinusoid (about 10 cm), in metres."""
    base = np.random.default_rng(123).normal(0, 0.3, (joints, 3))
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None]
    amp, phase = rng.normal(0, 0.1, (n, 1, joints, 3)), rng.uniform(0, 2 * np.pi, (n, 1, joints, 3))
    return (base + amp * np.sin(rng.uniform(0.1, 0.5, (n, 1, 1, 1)) * t + phase)).astype(np.float32)


def test_the_quantizer_returns_its_own_codes_learns_means_and_resets_dead_codes():
    torch.manual_seed(0)
    q = EMAQuantizer(size=4, dim=3, decay=0.0, reset_every=2)
    q.eval()
    assert torch.equal(q.codes(q.codebook.clone()), torch.arange(4))
    q.train()
    near0 = q.codebook[0] + 0.01 * torch.randn(10, 3)
    _, idx, commit = q(near0)
    assert (idx == 0).all() and commit > 0
    assert torch.allclose(q.codebook[0], near0.mean(0), atol=1e-4)  # decay 0: the code is its members' mean
    q(near0)  # codes 1..3 unused for reset_every steps: restarted at vectors of this batch
    assert all(any(torch.allclose(q.codebook[c], v) for v in near0) for c in (1, 2, 3))


def test_tokens_are_per_joint_every_four_frames_and_survive_save_pretrained(tmp_path):
    model = MotionTokenizer(num_joints=23, **TINY).eval()
    model.set_statistics(torch.from_numpy(motion(8, 0)))
    joints = torch.from_numpy(motion(2, 1))
    codes = model.encode(joints)
    assert codes.shape == (2, 4, 23) and model.frames_per_token == 4
    assert model.decode(codes).shape == joints.shape
    out = model(joints)  # the training forward decodes the quantised codes (straight-through), not the latents
    assert torch.equal(out["codes"], codes) and torch.allclose(out["joints"], model.decode(codes), atol=1e-5)
    model.save_pretrained(tmp_path)
    back = MotionTokenizer.from_pretrained(tmp_path).eval()
    assert torch.equal(back.encode(joints), codes) and torch.equal(back.joint_std, model.joint_std)


def test_training_lowers_the_loss_and_beats_the_mean_pose_on_held_out_motion():
    train, held_out = motion(256, 0), motion(64, 1)
    cfg = {"model": TINY, "steps": 150, "batch_size": 32, "lr": 3e-3, "lr_late": 3e-4, "late_fraction": 0.3}
    torch.set_num_threads(2)
    model, history = tokenizer_training.fit(train, cfg, seed=0)
    assert np.mean([h["loss"] for h in history[-10:]]) < 0.7 * np.mean([h["loss"] for h in history[:10]])
    report = tokenizer_training.score(model, held_out, train)
    assert report["heldout_mpjpe_mm"] < 0.8 * report["mean_pose_mpjpe_mm"], report
    assert report["codebook_usage"] > 0.25


def test_label_windows_take_valid_runs_and_remove_the_mid_hip():
    label = lf.make_label(20, "anny")
    rng = np.random.default_rng(0)
    label["fit_keypoints3d"] = rng.normal(0, 1, label["fit_keypoints3d"].shape).astype(np.float32)
    label["valid"][:] = True
    label["valid"][9] = False
    windows = tokenizer_training.label_windows(label, window=4, stride=2)
    assert len(windows) == 7  # starts 0, 2, 4, 10, 12, 14, 16: those at 6 and 8 hold invalid frame 9
    hips = windows[:, :, list(tokenizer_training.HIPS)].mean(2)
    assert np.allclose(hips, 0, atol=1e-6)
    raw = label["fit_keypoints3d"]
    assert np.allclose(windows[0, 1, 0], raw[1, 0] - raw[1, list(tokenizer_training.HIPS)].mean(0), atol=1e-6)


def test_mpjpe_is_the_mean_joint_distance_in_millimetres():
    a = torch.zeros(2, 3, 5, 3)
    b = a.clone()
    b[0, ..., 0] = 0.003  # 3 mm on every joint of window 0
    assert torch.allclose(mpjpe_mm(b, a), torch.tensor([3.0, 0.0]))


@pytest.mark.slow
def test_the_smoke_chain_trains_scores_and_registers_the_tokenizer(smoke_chain):
    report = json.loads((smoke_chain / "data/08_reporting/motion_tokenizer.json").read_text())
    assert report["heldout_windows"] > 0 and report["train_windows"] > report["heldout_windows"]
    assert np.isfinite(report["heldout_mpjpe_mm"]) and report["codebook_usage"] > 0
    record = json.loads((smoke_chain / "data/06_models/motion_tokenizer_registration.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{smoke_chain / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(record["name"], "smoke")
    assert str(version.version) == record["version"] and version.tags["heldout_mpjpe_mm"]
    folder = mlflow.artifacts.download_artifacts(f"models:/{record['name']}@smoke")
    registered = MotionTokenizer.from_pretrained(folder).eval()
    local = MotionTokenizer.from_pretrained(smoke_chain / "data/06_models/motion_tokenizer").eval()
    joints = torch.from_numpy(motion(2, 0)) * 0 + local.joint_mean  # the mean pose, in this model's units
    assert torch.equal(registered.encode(joints), local.encode(joints))
    run = client.get_run(version.run_id)
    assert {"motion_tokenizer_metrics.loss", "motion_tokenizer_metrics.heldout_mpjpe_mm"} <= set(run.data.metrics)
