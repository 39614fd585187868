"""The ablation runner (3DiMo Table 2): variants from the model configs, variant parameters, per-stage scores and
the table layout from the metric registry, and a smoke run of the pipeline."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader

from dimo.evaluation import registry
from dimo.evaluation.common import MetricUnavailable
from dimo.models import configs
from dimo.pipelines.ablation.nodes import (
    ablation_table,
    run_variant,
    stage_scores,
    variant_params,
)
from dimo.pipelines.ablation.pipeline import create_pipeline
from tests.conftest import PROJECT_ROOT, run_cli

BASE = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="local")
PARAMS = BASE["parameters"]


def test_each_variant_trains_its_own_chain_from_the_shared_base_with_the_same_seed_and_budget():
    training, ablation = PARAMS["training"], {**PARAMS["ablation"], "steps_scale": 0.5}
    full, concat = variant_params("full", training, ablation), variant_params("channel_concat", training, ablation)
    for name, p in (("full", full), ("channel_concat", concat)):
        assert p["registered_model_name"] == f"dimo-ablation-{name}"
        assert p["stages"]["stage1"]["init"] == "models:/dimo@base"  # the same start for every variant
        assert p["stages"]["stage2"]["init"] == f"models:/dimo-ablation-{name}@stage1"
        assert p["stages"]["stage3"]["init"] == f"models:/dimo-ablation-{name}@stage2"
        assert ([p["stages"][s]["aliases"] for s in ("stage1", "stage2", "stage3")]
                == [["stage1"], ["stage2"], ["stage3"]])
        assert p["seed"] == training["seed"] and p["model"]["transfer_from_other_variant"]
        assert p["checkpoint_dir"].endswith(f"/ablation/{name}")
        for s in ("stage1", "stage2", "stage3"):
            assert p["stages"][s]["steps"] == max(1, round(training["stages"][s]["steps"] * 0.5))
            assert p["stages"][s]["mix"] == training["stages"][s]["mix"]  # only the model differs
    assert concat["model"]["variant"] == "channel_concat" and full["model"]["variant"] == "full"
    assert training["stages"]["stage2"]["init"] == "models:/dimo@stage1"  # the caller's params are untouched


def test_table_puts_ours_beside_the_paper_in_table_2_order():
    results = [{"variant": "full", "stages": {
        "stage1": {"ssim": 0.5, "psnr": 12.0, "lpips": 0.7, "fid": None, "fvd": None, "cross_view_lpips": 0.71},
        "stage3": {"ssim": 0.6, "psnr": 13.0, "lpips": 0.6, "fid": None, "fvd": None, "cross_view_lpips": 0.62}}},
        {"variant": "no_hand", "skipped": "not in ablation.variants", "stages": {}}]
    table, md, metrics = ablation_table(results, PARAMS["ablation"])
    paper_order = ["w/ SMPL ctrl.", "w/ stage 1 only", "w/ stage 1 & 2", "w/ channel concat.", "w/o geo. superv.",
                   "w/o hand enc.", "Full Model"]
    assert list(table["method"]) == [r.label for r in configs.TABLE2] == paper_order  # the paper's row order
    full = table.set_index("method").loc["Full Model"]
    assert full["psnr (ours)"] == 13.0 and full["psnr (paper)"] == 18.0 and np.isnan(full["fid (ours)"])
    stage1 = table.set_index("method").loc["w/ stage 1 only"]
    assert stage1["ssim (ours)"] == 0.5 and stage1["ssim (paper)"] == 0.745
    assert np.isnan(table.set_index("method").loc["w/o hand enc.", "psnr (ours)"])
    assert "| Full Model | 0.600 / 0.739 | 13.0 / 18.0 | 0.600 / 0.221 | n/a / 36.9 | n/a / 297.4 | 0.620 |" in md
    assert metrics["Full_Model.psnr"]["value"] == 13.0


def test_one_node_per_known_variant_reading_the_clip_partitions():
    nodes = {n.name: n for n in create_pipeline().nodes}
    assert set(nodes) == {f"ablation_{v}" for v in configs.VARIANTS} | {"ablation_table"}
    assert {"synthetic_clips", "ingested_clips"} <= set(nodes["ablation_full"].inputs)
    assert nodes["ablation_table"].inputs == [f"ablation_{v}_result" for v in configs.VARIANTS] + ["params:ablation"]
    # every variant has its Table 2 row (after stage 3), and every row names a known variant
    assert {r.variant for r in configs.TABLE2 if r.stage == "stage3"} == set(configs.VARIANTS)
    assert {r.variant for r in configs.TABLE2} <= set(configs.VARIANTS)


def test_an_unknown_variant_in_the_parameters_is_refused_naming_the_known_ones():
    ablation = {**PARAMS["ablation"], "variants": {"full": {"score_after": ["stage3"]}, "fancy": {}}}
    with pytest.raises(ValueError, match=r"unknown model variants \['fancy'\].*'channel_concat'"):
        run_variant("full", *[None] * 8, PARAMS["training"], ablation, PARAMS["evaluate"], {})


def test_stage_scores_follow_the_registry_and_a_new_metric_reaches_table_2():
    scores = pd.DataFrame({"kind": ["reconstruction", "cross_view"], "psnr": [12.0, 14.0], "ssim": [0.5, 0.7],
                           "lpips_alex": [0.6, 0.8], "frames": [9, 9]})
    row, unavailable = stage_scores(scores, {"fid": MetricUnavailable("fid", "no weights"), "fvd": 250.0})
    assert row["psnr"] == 13.0 and row["lpips"] == row["lpips_alex"] == 0.7  # Table 2's lpips is the alex one
    assert row["cross_view_lpips"] == 0.8 and row["cross_view_psnr"] == 14.0 and "frames" not in row
    assert row["fid"] is None and row["fvd"] == 250.0 and unavailable == {"fid": "no weights"}
    with registry.registered(registry.Metric("mae", "pair", False, lambda g, t, w: 0.0, "MAE", ".2f")):
        row, _ = stage_scores(scores.assign(mae=[3.0, 5.0]), {})
        assert row["mae"] == 4.0
        results = [{"variant": "full", "stages": {"stage3": row}}]
        table, md, metrics = ablation_table(results, {**PARAMS["ablation"], "table_metrics": ["psnr", "mae"]})
    full = table.set_index("method").loc["Full Model"]
    assert full["mae (ours)"] == 4.0 and np.isnan(full["mae (paper)"]) and full["psnr (paper)"] == 18.0
    assert "| Method | PSNR ↑ ours / paper | MAE ↓ ours / paper | cross-view LPIPS ↓ ours |" in md
    assert "| Full Model | 13.0 / 18.0 | 4.00 / n/a | 0.800 |" in md
    assert metrics["Full_Model.mae"]["value"] == 4.0


def test_ablation_pipeline_trains_registers_and_tabulates_at_smoke_scale(smoke_chain):
    out = run_cli(["kedro", "run", "--env=smoke", "--pipelines=ablation"], cwd=smoke_chain, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = smoke_chain / "data" / "08_reporting" / "ablation"
    full = json.loads((report / "full.json").read_text())
    assert set(full["stages"]) == {"stage1", "stage3"}  # smoke scores after stage 1 and stage 3 only
    assert full["stages"]["stage3"]["lpips"] == full["stages"]["stage3"]["lpips_alex"]  # Table 2's LPIPS
    assert json.loads((report / "no_geo.json").read_text())["skipped"]  # not configured in smoke
    md = (report / "ablation_table.md").read_text()
    assert "| Full Model |" in md and "/ 18.0 |" in md
    smpl = json.loads((report / "smpl_control.json").read_text())["stages"]["stage3"]
    assert np.isfinite(smpl["psnr"]) and smpl["pairs"] >= 2  # SMPL control is driven by the pose labels
    mlflow.set_tracking_uri(f"sqlite:///{smoke_chain / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    for name in ("dimo-ablation-full", "dimo-ablation-smpl_control"):
        aliases = client.get_registered_model(name).aliases
        assert {"stage1", "stage2", "stage3"} <= set(aliases)
        assert client.get_model_version(name, aliases["stage3"]).tags["variant"] == name.split("-")[-1]
    # the main model's aliases were not touched by the ablation runs
    assert client.get_model_version("dimo", client.get_registered_model("dimo").aliases["champion"]).tags[
        "variant"] == "full"
