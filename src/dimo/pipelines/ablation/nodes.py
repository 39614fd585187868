"""Nodes of `ablation`: 3DiMo Table 2 at toy scale. Each model variant trains stage 1 -> 2 -> 3 from the same
registered base with the same seeds and step budget, is registered under its own name, and is scored on the
benchmark; the full variant is also scored after stage 1 and after stage 2 ("w/ stage 1 only", "w/ stage 1 & 2").
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pandas as pd

from dimo.evaluation import benchmark
from dimo.evaluation.common import MetricUnavailable
from dimo.inference import Options
from dimo.training.nodes import register_stage, run_stage
from dimo.training.stages import PAPER_STAGES as STAGE_ORDER

log = logging.getLogger(__name__)

# Table 2 of the paper (SSIM, PSNR, LPIPS, FID, FVD on TikTok + internet videos, 121 frames at 480p).
PAPER_TABLE2 = {
    "w/ SMPL ctrl.": (0.724, 17.1, 0.238, 39.7, 348.2),
    "w/ stage 1 only": (0.745, 18.3, 0.220, 40.5, 305.4),
    "w/ stage 1 & 2": (0.723, 17.9, 0.221, 38.2, 314.5),
    "w/ channel concat.": (0.703, 16.8, 0.304, 48.2, 395.6),
    "w/o geo. superv.": (0.684, 15.8, 0.347, 51.3, 383.1),
    "w/o hand enc.": (0.726, 17.5, 0.234, 38.1, 298.7),
    "Full Model": (0.739, 18.0, 0.221, 36.9, 297.4),
}
TABLE2_METRICS = ("ssim", "psnr", "lpips", "fid", "fvd")


def variant_params(name: str, training: dict, ablation: dict) -> dict:
    """The training parameters of one ablation variant: its own registered name and checkpoints, the shared base,
    the same seed, and the step budget scaled by `steps_scale`."""
    spec = ablation["variants"][name]
    params = copy.deepcopy(training)
    params["model"] = {**params["model"], "variant": spec["model_variant"], "transfer_from_other_variant": True}
    params["registered_model_name"] = f"{ablation['registered_model_prefix']}-{name}"
    params["checkpoint_dir"] = f"{ablation['checkpoint_dir']}/{name}"
    params["sample_steps"] = 0  # no sample grids: the benchmark videos are the samples
    previous = ablation["base"]
    for stage in STAGE_ORDER:
        st = params["stages"][stage]
        st["steps"] = max(1, round(st["steps"] * ablation["steps_scale"]))
        st["init"], st["aliases"] = previous, [stage]
        previous = f"models:/{params['registered_model_name']}@{stage}"
    return params


def run_variant(name: str, pairs: pd.DataFrame, cache: dict, codec, manifest: dict, deepspeed_config: dict,
                clips: pd.DataFrame, training: dict, ablation: dict, evaluate: dict, label_params: dict) -> dict:
    """Train one variant through the three stages and score it (after each stage listed in `score_after`).
    A variant left out of `ablation.variants` is skipped (its rows read n/a): run a subset by configuration."""
    if name not in ablation["variants"]:
        log.info("ablation: %s is not in ablation.variants: skipped", name)
        return {"variant": name, "skipped": "not in ablation.variants", "stages": {}}
    params = variant_params(name, training, ablation)
    spec = ablation["variants"][name]
    bench = benchmark.benchmark_pairs(clips, evaluate["split"], evaluate["kinds"], evaluate.get("max_pairs"))
    out = {"variant": name, "model_variant": spec["model_variant"], "stages": {}}
    for stage in STAGE_ORDER:
        t0 = time.perf_counter()
        model, summary = run_stage(stage, pairs, cache, codec, manifest, deepspeed_config, params)
        registration = register_stage(stage, model, codec, manifest, summary, params)
        train_s = time.perf_counter() - t0
        if stage not in spec["score_after"]:
            continue
        t0 = time.perf_counter()
        scores, videos = benchmark.evaluate_model(model, codec, manifest["text_encoder"], bench, Options.from_sampling(evaluate["sampling"], progress=False),
                                                  evaluate["metrics"], evaluate["weights"],
                                                  label_params if ablation["pose"] else None)
        set_level = benchmark.set_metrics(bench, videos, evaluate["weights"])
        row = {m: float(scores[m].mean()) for m in evaluate["metrics"]}
        row["lpips"] = row.get("lpips_alex", np.nan)
        for key in ("camera_following", "mpjpe_mm"):
            if key in scores:
                row[key] = float(scores[key].mean())
        cross = scores[scores["kind"] == "cross_view"]
        if len(cross):
            row["cross_view_lpips"] = float(cross["lpips_alex"].mean()) if "lpips_alex" in cross else np.nan
            row["cross_view_psnr"] = float(cross["psnr"].mean())
        for key, value in set_level.items():
            row[key] = float(value) if not isinstance(value, MetricUnavailable) else None
            if isinstance(value, MetricUnavailable):
                out.setdefault("unavailable", {})[key] = value.reason
        out["stages"][stage] = {**row, "pairs": len(bench), "train_seconds": train_s,
                                "eval_seconds": time.perf_counter() - t0, "final_losses": summary["final_losses"],
                                "model_uri": f"models:/{registration['name']}/{registration['version']}"}
        log.info("ablation %s after %s: %s", name, stage, {k: round(v, 4) for k, v in row.items()
                                                           if isinstance(v, float)})
    out["registered"] = f"models:/{params['registered_model_name']}@stage3"
    return out


def ablation_table(results: list[dict], ablation: dict) -> tuple[pd.DataFrame, str, dict]:
    """Table 2's layout, our toy-scale numbers beside the paper's."""
    rows = []
    for row_name, (variant, stage) in ablation["rows"].items():
        res = next((r for r in results if r["variant"] == variant), None)
        ours = (res or {}).get("stages", {}).get(stage)
        paper = dict(zip(TABLE2_METRICS, PAPER_TABLE2.get(row_name, (np.nan,) * 5)))
        row = {"method": row_name}
        for m in TABLE2_METRICS:
            row[f"{m} (ours)"] = ours.get(m) if ours and ours.get(m) is not None else np.nan
            row[f"{m} (paper)"] = paper[m]
        row["cross-view lpips (ours)"] = ours.get("cross_view_lpips", np.nan) if ours else np.nan
        if ours and "camera_following" in ours:
            row["camera following (ours)"] = ours["camera_following"]
        rows.append(row)
    table = pd.DataFrame(rows)
    header = ["Method"] + [m.upper() for m in TABLE2_METRICS]
    arrows = {"ssim": "↑", "psnr": "↑", "lpips": "↓", "fid": "↓", "fvd": "↓"}

    def cell(value, fmt):
        return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, fmt)

    fmts = {"ssim": ".3f", "psnr": ".1f", "lpips": ".3f", "fid": ".1f", "fvd": ".1f"}
    lines = ["## Ablation (3DiMo Table 2): ours at toy scale / paper", "",
             "| " + " | ".join([header[0]] + [f"{h} {arrows[m]} ours / paper" for h, m in
                                              zip(header[1:], TABLE2_METRICS)] + ["cross-view LPIPS ↓ ours"]) + " |",
             "|" + "---|" * (len(TABLE2_METRICS) + 2)]
    for r in rows:
        cells = [f"{cell(r[f'{m} (ours)'], fmts[m])} / {cell(r[f'{m} (paper)'], fmts[m])}" for m in TABLE2_METRICS]
        lines.append("| " + " | ".join([r["method"], *cells, cell(r["cross-view lpips (ours)"], ".3f")]) + " |")
    reasons = sorted({f"{k}: {v}" for r in results for k, v in r.get("unavailable", {}).items()})
    lines += ["", f"- toy scale: tiny model, {ablation['steps_scale']:g} x the training stage budgets, "
              "same seed for every variant, benchmark = the evaluate split (reconstruction + cross-view pairs)",
              "- paper: Wan2.1 at 480p, 10K/15K/5K steps, TikTok + internet videos; the two are not comparable in "
              "value, only in ordering", *[f"- unavailable {r}" for r in reasons], ""]
    metrics = {}
    for r in rows:
        key = r["method"].replace("/", "").replace(".", "").replace("&", "and").strip().replace(" ", "_")
        for m in ("ssim", "psnr", "lpips"):
            v = r[f"{m} (ours)"]
            if isinstance(v, float) and np.isfinite(v):
                metrics[f"{key}.{m}"] = {"value": v, "step": 0}
    return table, "\n".join(lines), metrics
