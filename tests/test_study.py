"""The study (docs/study.md): its unit list and per-unit parameters, the hypothesis verdicts on inputs with known
answers, and (slow) the pipeline end to end at smoke size: results.json's schema, a second run that trains
nothing, and a failing later unit that leaves the earlier units' results as they were."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from kedro.config import OmegaConfigLoader

from dimo.study import hypotheses, units
from tests.conftest import PROJECT_ROOT, run_cli

STUDY = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="study")
PARAMS = STUDY["parameters"]


def test_units_start_from_one_base_and_recon_only_gets_the_full_schedules_steps(tmp_path):
    study, training = {**PARAMS["study"], "output_dir": str(tmp_path)}, PARAMS["training"]
    unit_list = units.units(study, training)
    assert unit_list[0].name == units.BASE_UNIT and unit_list[0].schedule == ("pretrain",)
    names = [u.name for u in unit_list[1:]]
    assert len(names) == len(study["seeds"]) * len(study["arms"]) >= 15 and len(set(names)) == len(names)
    assert names[: len(study["arms"])] == [f"{arm}-s{study['seeds'][0]}" for arm in study["arms"]]  # seed-major
    by_name = {u.name: u for u in unit_list}
    full, recon = by_name["full-s1"], by_name["recon_only-s1"]
    assert sum(recon.steps.values()) == sum(full.steps.values()) and recon.schedule == ("stage1",)
    params = units.unit_params(full, training, study)
    base_weights = str(tmp_path / units.BASE_UNIT / "pretrain")
    assert params["stages"]["stage1"]["init"] == base_weights
    assert params["stages"]["stage2"]["init"] == str(tmp_path / "full-s1" / "stage1")
    assert params["stages"]["stage3"]["init"] == str(tmp_path / "full-s1" / "stage2")
    assert params["seed"] == 1 and params["checkpoint_dir"] == str(tmp_path / "full-s1" / "checkpoints")
    concat = units.unit_params(by_name["channel_concat-s2"], training, study)
    assert concat["model"]["variant"] == "channel_concat" and concat["model"]["transfer_from_other_variant"]
    assert units.unit_params(recon, training, study)["stages"]["stage1"]["steps"] == sum(full.steps.values())
    assert training["stages"]["stage1"]["init"] == "scratch"  # the caller's parameters are untouched


def _results(values: dict[str, list[float]], metric: str = "pck") -> dict:
    """unit -> metrics with one per-pair table; pairs p0.. of kind cross_view."""
    out = {}
    for unit, vals in values.items():
        arm, seed = unit.rsplit("-s", 1)
        out[unit] = {"arm": arm, "seed": int(seed), "pairs": [
            {"pair_id": f"p{i}", "kind": "cross_view", metric: v, "pck_null": 0.0} for i, v in enumerate(vals)]}
    return out


BOOT = {"n_boot": 500, "seed": 0, "level": 0.95}
H2 = next(h for h in hypotheses.HYPOTHESES if h.id == "H2")


def test_a_clear_difference_holds_a_reversed_one_does_not_and_noise_is_inconclusive():
    rng = np.random.default_rng(0)
    base = {f"channel_concat-s{s}": list(rng.uniform(0.2, 0.4, 8)) for s in range(3)}
    better = base | {f"full-s{s}": [v + 0.1 for v in base[f"channel_concat-s{s}"]] for s in range(3)}
    worse = base | {f"full-s{s}": [v - 0.1 for v in base[f"channel_concat-s{s}"]] for s in range(3)}
    noise = base | {f"full-s{s}": [v + d for v, d in zip(base[f"channel_concat-s{s}"], rng.normal(0, 0.1, 8))]
                    for s in range(3)}
    row = hypotheses.judge(H2, _results(better), [0, 1, 2], BOOT)
    assert row["verdict"] == "holds" and row["mean"] == pytest.approx(0.1) and row["n"] == 24
    assert set(row["per_seed"]) == {"0", "1", "2"} and all(v == pytest.approx(0.1) for v in row["per_seed"].values())
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert hypotheses.judge(H2, _results(worse), [0, 1, 2], BOOT)["verdict"] == "does not hold"
    noisy = hypotheses.judge(H2, _results(noise), [0, 1, 2], BOOT)
    assert noisy["verdict"] == "inconclusive" and noisy["ci_low"] < 0 < noisy["ci_high"]
    missing = hypotheses.judge(H2, _results(base), [0, 1, 2], BOOT)  # the full arm never trained
    assert missing["verdict"] == "n/a" and missing["n"] == 0


def test_a_reference_column_and_zero_are_compared_on_the_same_arm():
    h1b = next(h for h in hypotheses.HYPOTHESES if h.id == "H1b")
    row = hypotheses.judge(h1b, _results({"full-s0": [0.5] * 4}), [0], BOOT)  # pck 0.5 vs its pck_null 0.0
    assert row["mean"] == pytest.approx(0.5) and row["verdict"] == "holds"
    h1a = next(h for h in hypotheses.HYPOTHESES if h.id == "H1a")
    gaps = _results({"full-s0": [-0.01, 0.01, -0.02, 0.02]}, metric="gap")
    assert hypotheses.judge(h1a, gaps, [0], BOOT)["verdict"] == "inconclusive"


def _tiny_study(project, arms: list[str]) -> None:
    """The copy's conf/study at smoke size: one seed, a few steps per stage, a short probe fit."""
    path = project / "conf" / "study" / "parameters_study.yml"
    cfg = yaml.safe_load(path.read_text())
    study = cfg["study"]
    study["seeds"] = [0]
    study["arms"] = {a: PARAMS["study"]["arms"][a] for a in arms}
    # the smoke chain's synthetic clips are all in the train split: the plumbing is measured on them
    study["measure"] |= {"splits": ["train"], "max_pairs": 2, "gap_draws": 1, "probe": {"epochs": 1, "max_seconds": 5},
                         "generate": {"steps": 2, "guidance_text": 1.0, "guidance_motion": 1.0}}
    study["bootstrap"]["n_boot"] = 200
    path.write_text(yaml.safe_dump(cfg))
    path = project / "conf" / "study" / "parameters_training.yml"
    cfg = yaml.safe_load(path.read_text())
    for stage in cfg["training"]["stages"].values():
        stage["steps"] = 2
    cfg["training"] |= {"checkpoint_every": 1, "log_every": 1}
    path.write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
def test_study_pipeline_writes_results_resumes_and_keeps_done_units_when_a_later_one_fails(smoke_chain, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(smoke_chain, project, symlinks=True)
    _tiny_study(project, ["full", "recon_only"])
    first = run_cli(["kedro", "run", "--env=study", "--pipelines=study"], cwd=project, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = json.loads((project / "data/08_reporting/study/results.json").read_text())
    assert {"hypotheses", "codec", "probe", "wall_time_s", "arms", "curves", "seeds"} <= set(results)
    assert {r["id"] for r in results["hypotheses"]} == {h.id for h in hypotheses.HYPOTHESES}
    for row in results["hypotheses"]:
        assert {"metric", "per_seed", "mean", "ci_low", "ci_high", "verdict"} <= set(row)
        assert row["verdict"] in ("holds", "does not hold", "inconclusive", "n/a")
    by_id = {r["id"]: r for r in results["hypotheses"]}
    assert by_id["H1a"]["n"] > 0 and by_id["H3b"]["n"] > 0 and by_id["H2"]["verdict"] == "n/a"  # no concat arm
    assert np.isfinite(results["codec"]["psnr_db"]) and results["wall_time_s"] > 0
    units_dir = project / "data/07_model_output/study"
    done = {p.parent.name: p.read_text() for p in units_dir.glob("*/metrics.json")}
    assert set(done) == {"base", "full-s0", "recon_only-s0"}

    # A later unit fails (a stale checkpoint of another run sits in its folder): the done units stay as they were.
    _tiny_study(project, ["full", "recon_only", "channel_concat"])
    stale = units_dir / "channel_concat-s0" / "checkpoints" / "stage1"
    (stale / "step-00000001").mkdir(parents=True)
    (stale / "latest").write_text("step-00000001")
    (stale / "resume.json").write_text(json.dumps({"stage": "stage1", "params": "another run"}))
    second = run_cli(["kedro", "run", "--env=study", "--pipelines=study"], cwd=project, timeout=900)
    assert second.returncode != 0 and "holds a checkpoint" in second.stdout + second.stderr
    log = second.stdout + second.stderr
    assert "full-s0 trains" not in log and "base trains" not in log  # done units train nothing
    assert {p.parent.name: p.read_text() for p in units_dir.glob("*/metrics.json")} == done

    shutil.rmtree(stale)
    third = run_cli(["kedro", "run", "--env=study", "--pipelines=study"], cwd=project, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    log = third.stdout + third.stderr
    assert "channel_concat-s0 trains" in log and "full-s0 trains" not in log
    results = json.loads((project / "data/08_reporting/study/results.json").read_text())
    assert {r["id"]: r for r in results["hypotheses"]}["H2"]["n"] > 0
