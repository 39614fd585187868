"""Three-stage training: the paper's data mixtures, the anneal, and a smoke chain run for real
(DeepSpeed engine, MLflow registry, kill -9 and exact resume, two ranks under the deepspeed launcher)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from kedro.config import OmegaConfigLoader
from safetensors.torch import load_file

from dimo.models.schedules import AnnealSchedule
from dimo.training import mixtures
from dimo.training import stages as chain
from dimo.training.stages import global_step_offset
from tests.conftest import PROJECT_ROOT, VENV_BIN, run_cli

BASE = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="local")
STAGES = BASE["parameters"]["training"]["stages"]
PAPER = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), env="paper", base_env="base",
                          default_run_env="local")["parameters"]["training"]


def clip_table() -> pd.DataFrame:
    rows = [("s0", "a", "single_view"), ("s1", "b", "single_view"), ("s2", "c", "single_view")]
    rows += [(f"m{g}{v}", f"mv{g}", "multi_view") for g in range(2) for v in range(3)]
    rows += [(f"c{g}{v}", f"mc{g}", "moving_camera") for g in range(2) for v in range(3)]
    return pd.DataFrame(rows, columns=["clip_id", "group_id", "supervision"])


def test_stage_mixtures_follow_the_paper():
    clips = clip_table()
    kinds = dict(zip(clips["clip_id"], clips["supervision"]))
    stage1 = mixtures.build_pairs(clips, {"name": "stage1", **STAGES["stage1"]})
    assert set(stage1["kind"]) == {"reconstruction"} and (stage1.driving_clip_id == stage1.target_clip_id).all()
    assert {kinds[c] for c in stage1["driving_clip_id"]} == {"single_view"}

    stage2 = mixtures.build_pairs(clips, {"name": "stage2", **STAGES["stage2"]})
    drawn = mixtures.sample_indices(stage2, STAGES["stage2"]["mix"], 0, 1000, seed=0)
    counts = Counter(stage2["kind"].iloc[drawn])
    assert counts == {"reconstruction": 500, "cross_view": 500}  # balanced, exactly
    cross = stage2[stage2.kind == "cross_view"]
    assert (cross.driving_clip_id != cross.target_clip_id).all()
    assert all(d[:2] == t[:2] for d, t in zip(cross.driving_clip_id, cross.target_clip_id))  # same group only
    assert len(cross) == 4 * 3 * 2  # 4 groups x ordered pairs of 3 views

    stage3 = mixtures.build_pairs(clips, {"name": "stage3", **STAGES["stage3"]})
    assert set(stage3["kind"]) == {"cross_view"}
    assert {kinds[c] for c in stage3["driving_clip_id"]} <= {"multi_view", "moving_camera"}


def test_a_mixture_the_data_cannot_serve_is_refused():
    only_single = clip_table().query("supervision == 'single_view'")
    with pytest.raises(ValueError, match=r"stage3: the mix asks for \['cross_view'\] pairs but the data has none"):
        mixtures.build_pairs(only_single, {"name": "stage3", **STAGES["stage3"]})


def test_geometric_weight_anneals_over_global_steps_like_the_paper():
    schedule = AnnealSchedule(**PAPER["geometric_loss"])
    assert schedule.weight(0) == pytest.approx(0.1) and schedule.weight(12_000) == 0.0
    assert schedule.weight(20_000) == 0.0 and 0 < schedule.weight(11_000) < 0.1
    offsets = {s: global_step_offset(s, PAPER["stages"]) for s in ("stage1", "stage2", "stage3")}
    assert offsets == {"stage1": 0, "stage2": 10_000, "stage3": 25_000}
    assert schedule.weight(offsets["stage2"]) > 0  # reaches into stage 2 ...
    assert schedule.weight(offsets["stage2"] + 2_000) == 0.0  # ... and ends 2K steps in
    assert [PAPER["stages"][s]["steps"] for s in ("stage1", "stage2", "stage3")] == [10_000, 15_000, 5_000]
    assert PAPER["batch"]["global"] == 64 and PAPER["lr"] == 1e-5


def test_every_environment_configures_exactly_the_stages_of_the_chain():
    for env in ("base", "smoke", "paper"):
        params = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), env=env, base_env="base",
                                   default_run_env="local")["parameters"]["training"]
        assert list(params["stages"]) == [s.key for s in chain.STAGES], env
    assert chain.PAPER_STAGES == ("stage1", "stage2", "stage3")
    assert [chain.get(s.previous).key for s in chain.STAGES if s.previous] == [s.key for s in chain.STAGES[:-1]]


FRESH_DIGEST = """
import hashlib, sys, torch
from dimo.training.model_init import build_model
torch.rand(int(sys.argv[1]))  # whatever drew from the global RNG before must not matter
params = {"seed": 7, "model": {"config": "tiny", "variant": "full"}, "stages": {"pretrain": {"init": "scratch"}}}
model = build_model("pretrain", params, {"text_dim": 384})
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


def test_a_fresh_model_is_the_same_in_every_process_for_its_seed():
    """torch seeds its global RNG from the OS in every new process: an unseeded init made every run differ."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    digests = [subprocess.run([str(VENV_BIN / "python"), "-c", FRESH_DIGEST, str(n)], env=env, check=True,
                              capture_output=True, text=True).stdout.split()[-1] for n in (1, 5)]
    assert digests[0] == digests[1]


def test_a_loaded_but_missing_sweep_file_fails_before_training_and_the_chain_checks_names_first():
    from dimo.training.nodes import run_stage

    params = {**BASE["parameters"]["training"], "geometric_loss_from_sweep": True}
    with pytest.raises(FileNotFoundError, match="geometric_loss_from_sweep is true but"):  # the catalog's None
        run_stage("stage2", pd.DataFrame(), {}, None, {}, {}, params, sweep_best=None)
    with pytest.raises(ValueError, match="stage2: training_pairs has no train pairs"):  # not loaded: trains as set
        run_stage("stage2", pd.DataFrame({"stage": [], "split": []}), {}, None, {}, {}, params)
    with pytest.raises(KeyError, match="unknown training stage 'stage9'"):
        next(chain.run_chain(["stage1", "stage9"], pd.DataFrame(), {}, None, {}, {}, params))


# ------------------------------------------------------------------ the smoke chain, for real


@pytest.fixture(scope="module")
def trained(smoke_chain):
    """A project copy after `kedro run --env=smoke` of the whole default chain (tests/conftest.py)."""
    mlflow.set_tracking_uri(f"sqlite:///{smoke_chain / 'mlflow.db'}")
    return smoke_chain


def test_chain_registers_every_stage_with_aliases(trained):
    client = mlflow.MlflowClient()
    versions = {a: client.get_model_version_by_alias("dimo", a).version
                for a in ("base", "stage1", "stage2", "stage3", "champion")}
    assert versions["stage3"] == versions["champion"]
    assert len({versions[a] for a in ("base", "stage1", "stage2", "stage3")}) == 4
    run = client.get_run(client.get_model_version("dimo", versions["stage2"]).run_id)
    assert run.info.run_name == "train_stage2" and "mlflow.parentRunId" in run.data.tags  # the stage's nested run
    assert "training.lr" in run.data.params and "git_commit" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "stage2.geometric_weight")
    assert history[0].value > 0  # the anneal reaches into stage 2 (smoke: stage1 4 steps, end step 6)
    stage3 = client.get_model_version("dimo", versions["stage3"]).run_id
    assert client.get_metric_history(stage3, "stage3.geometric_weight")[-1].value == 0.0
    pairs = pd.read_parquet(trained / "data/05_model_input/training_pairs.parquet")
    assert set(pairs.query("stage == 'stage1'")["kind"]) == {"reconstruction"}
    assert set(pairs.query("stage == 'stage3'")["kind"]) == {"cross_view"}


def test_loss_falls_over_a_smoke_run(trained):
    out = run_cli(["kedro", "run", "--env=smoke", "--pipelines=train_stage1",
                   "--params=training.stages.stage1.steps=30,training.lr=0.003"], cwd=trained, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    client = mlflow.MlflowClient()
    run_id = client.get_model_version_by_alias("dimo", "stage1").run_id
    losses = [m.value for m in client.get_metric_history(run_id, "stage1.loss")]
    assert len(losses) == 30
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.8 * first, (first, last)


def _stage1_weights(project: Path) -> dict:
    return load_file(str(project / "data/06_models/stage1/generator/diffusion_pytorch_model.safetensors"))


def test_kill_9_then_the_same_command_resumes_to_the_same_weights(trained):
    cmd = ["kedro", "run", "--env=smoke", "--pipelines=train_stage1",
           "--params=training.stages.stage1.steps=24,training.checkpoint_every=4"]
    out = run_cli(cmd, cwd=trained, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    uninterrupted = _stage1_weights(trained)

    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([str(VENV_BIN / "kedro"), *cmd[1:]], cwd=trained, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = trained / "data/06_models/checkpoints/stage1/latest"
    deadline = time.time() + 300
    while not (latest.is_file() and latest.read_text().strip() >= "step-00000008") and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9, mid-run
    proc.wait()
    assert latest.is_file(), "no checkpoint was written before the kill"
    killed_at = latest.read_text().strip()
    assert killed_at < "step-00000024"

    out = run_cli(cmd, cwd=trained, timeout=600)  # the same command again
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout + out.stderr
    resumed = _stage1_weights(trained)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), "resumed weights differ"


def test_two_ranks_under_the_deepspeed_launcher(trained):
    out = run_cli(["deepspeed", "--num_gpus", "2", "--master_port", "29731", "--module", "dimo.training.launch",
                   "--stage", "stage2", "--env", "smoke"], cwd=trained, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("dimo", "stage2")
    run = client.get_run(version.run_id)
    assert run.data.params["world_size"] == "2"


def test_a_missing_previous_stage_or_a_config_mismatch_fails_clearly(trained, tmp_path):
    from dimo.training import registry
    from dimo.training.model_init import build_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(LookupError, match=r"models:/dimo@stage1: no such registered model version.*previous stage"):
            registry.load_model("models:/dimo@stage1")
    finally:
        mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    params = {"model": {"config": "small", "variant": "full"}, "stages": {"stage2": {"init": "models:/dimo@stage1"}}}
    with pytest.raises(ValueError, match=r"stage2: models:/dimo@stage1 holds a 'tiny' model .* asks for 'small'"):
        build_model("stage2", params, {"text_dim": 384})


def test_registered_model_loads_back_and_generates(trained):
    model = mlflow.pyfunc.load_model("models:/dimo@champion")
    frames = torch.rand(1, 17, 3, 32, 32) * 2 - 1
    reference = torch.rand(1, 3, 64, 64) * 2 - 1
    video = model.unwrap_python_model().predict(None, {"reference_image": reference, "driving_frames": frames,
                                                       "prompt": "A person waves. The camera remains static."},
                                                params={"num_steps": 2})
    assert video.shape == (1, 3, 17, 64, 64) and torch.isfinite(video).all()
