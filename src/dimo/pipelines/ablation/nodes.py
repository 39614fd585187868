"""Nodes of `ablation`: 3DiMo Table 2 at toy scale. Each model variant (`dimo.models.configs.VARIANTS`) trains
stage 1 -> 2 -> 3 from the same registered base with the same seeds and step budget, is registered under its own
name, and is scored on the benchmark after the stages listed in its `score_after`; the full variant is also scored
after stage 1 and stage 2 ("w/ stage 1 only", "w/ stage 1 & 2"). Table 2's rows and the paper's numbers are
`configs.TABLE2`; the metrics and their formats come from `dimo.evaluation.registry`.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pandas as pd

from dimo import clip_table
from dimo.evaluation import benchmark, registry
from dimo.evaluation.common import MetricUnavailable
from dimo.inference import Options
from dimo.models import configs
from dimo.training import handover
from dimo.training.stages import PAPER_STAGES, run_chain

log = logging.getLogger(__name__)


def _check_variants(ablation: dict) -> None:
    unknown = sorted(set(ablation["variants"]) - set(configs.VARIANTS))
    if unknown:
        raise ValueError(f"ablation.variants: unknown model variants {unknown}; known (dimo.models.configs."
                         f"VARIANTS): {list(configs.VARIANTS)}")


def variant_params(name: str, training: dict, ablation: dict) -> dict:
    """The training parameters of one ablation variant: its own registered name and checkpoints, the shared base,
    the same seed, and the step budget scaled by `steps_scale`."""
    params = copy.deepcopy(training)
    params["model"] = {**params["model"], "variant": name, "transfer_from_other_variant": True}
    params["registered_model_name"] = f"{ablation['registered_model_prefix']}-{name}"
    params["checkpoint_dir"] = f"{ablation['checkpoint_dir']}/{name}"
    params["sample_steps"] = 0  # no sample grids: the benchmark videos are the samples
    params["stage_models"] = None  # its stages are not the chain's folders; the shared base may be (handover)
    previous = handover.resolve_init(ablation["base"], training)
    for stage in PAPER_STAGES:
        st = params["stages"][stage]
        st["steps"] = max(1, round(st["steps"] * ablation["steps_scale"]))
        st["init"], st["aliases"] = previous, [stage]
        previous = f"models:/{params['registered_model_name']}@{stage}"
    return params


def stage_scores(scores: pd.DataFrame, set_level: dict) -> tuple[dict, dict]:
    """(row, unavailable): the means of every registered per-pair and pose metric that was scored, the aliases
    (Table 2's `lpips`), the cross-view means, and the set-level values (None where unavailable, with the reason)."""
    row = {}
    for m in registry.METRICS.values():
        if m.kind in ("pair", "pose") and m.name in scores:
            row[m.name] = float(scores[m.name].mean())
        elif m.kind == "alias":
            row[m.name] = row.get(m.of, np.nan)
    cross = scores[scores["kind"] == "cross_view"]
    if len(cross):
        row["cross_view_lpips"] = float(cross["lpips_alex"].mean()) if "lpips_alex" in cross else np.nan
        row["cross_view_psnr"] = float(cross["psnr"].mean())
    unavailable = {}
    for key, value in set_level.items():
        row[key] = float(value) if not isinstance(value, MetricUnavailable) else None
        if isinstance(value, MetricUnavailable):
            unavailable[key] = value.reason
    return row, unavailable


def run_variant(name: str, pairs: pd.DataFrame, cache: dict, codec, manifest: dict, deepspeed_config: dict,
                clips: pd.DataFrame, synthetic_clips: dict | None, ingested_clips: dict | None, training: dict,
                ablation: dict, evaluate: dict, label_params: dict) -> dict:
    """Train one variant through the three stages (`training.stages.run_chain`) and score it after each stage
    listed in `score_after`. A variant left out of `ablation.variants` is skipped (its rows read n/a): run a
    subset by configuration."""
    _check_variants(ablation)
    if name not in ablation["variants"]:
        log.info("ablation: %s is not in ablation.variants: skipped", name)
        return {"variant": name, "skipped": "not in ablation.variants", "stages": {}}
    params = variant_params(name, training, ablation)
    spec = ablation["variants"][name]
    bench = benchmark.benchmark_pairs(clips, evaluate["split"], evaluate["kinds"], evaluate.get("max_pairs"))
    targets = clip_table.clip_loaders(synthetic_clips, ingested_clips)
    options = Options.from_sampling(evaluate["sampling"], progress=False)
    out = {"variant": name, "model_variant": name, "stages": {}}
    t0 = time.perf_counter()
    for done in run_chain(PAPER_STAGES, pairs, cache, codec, manifest, deepspeed_config, params):
        train_s = time.perf_counter() - t0
        if done.stage in spec["score_after"]:
            t0 = time.perf_counter()
            scores, videos = benchmark.evaluate_model(done.model, codec, manifest["text_encoder"], bench, options,
                                                      evaluate["metrics"], evaluate["weights"],
                                                      label_params if ablation["pose"] else None, clips=targets,
                                                      device=ablation.get("device"))
            row, unavailable = stage_scores(scores, benchmark.set_metrics(bench, videos, evaluate["weights"],
                                                                          clips=targets))
            if unavailable:
                out.setdefault("unavailable", {}).update(unavailable)
            reg = done.registration
            out["stages"][done.stage] = {**row, "pairs": len(bench), "train_seconds": train_s,
                                         "eval_seconds": time.perf_counter() - t0,
                                         "final_losses": done.summary["final_losses"],
                                         "model_uri": f"models:/{reg['name']}/{reg['version']}"}
            log.info("ablation %s after %s: %s", name, done.stage,
                     {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
        t0 = time.perf_counter()
    out["registered"] = f"models:/{params['registered_model_name']}@stage3"
    return out


def table_rows() -> list[configs.Table2Row]:
    """Table 2's rows in the paper's order, then any variant the paper has no row for (scored after stage 3)."""
    rows = list(configs.TABLE2)
    listed = {r.variant for r in rows}
    return rows + [configs.Table2Row(v, v, PAPER_STAGES[-1], {}) for v in configs.VARIANTS if v not in listed]


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, fmt)


def ablation_table(results: list[dict], ablation: dict) -> tuple[pd.DataFrame, str, dict]:
    """Table 2's layout, our toy-scale numbers beside the paper's, one column pair per `ablation.table_metrics`."""
    metrics = [registry.get(m) for m in ablation["table_metrics"]]
    rows = []
    for spec in table_rows():
        res = next((r for r in results if r["variant"] == spec.variant), None)
        ours = (res or {}).get("stages", {}).get(spec.stage)
        row = {"method": spec.label}
        for m in metrics:
            row[f"{m.name} (ours)"] = ours.get(m.name) if ours and ours.get(m.name) is not None else np.nan
            row[f"{m.name} (paper)"] = spec.paper.get(m.name, np.nan)
        row["cross-view lpips (ours)"] = ours.get("cross_view_lpips", np.nan) if ours else np.nan
        if ours and "camera_following" in ours:
            row["camera following (ours)"] = ours["camera_following"]
        rows.append(row)
    lpips = registry.get("lpips")
    lines = ["## Ablation (3DiMo Table 2): ours at toy scale / paper", "",
             "| " + " | ".join(["Method"] + [f"{m.header} {m.arrow} ours / paper" for m in metrics]
                               + [f"cross-view {lpips.header} {lpips.arrow} ours"]) + " |",
             "|" + "---|" * (len(metrics) + 2)]
    for r in rows:
        cells = [f"{_cell(r[f'{m.name} (ours)'], m.fmt)} / {_cell(r[f'{m.name} (paper)'], m.fmt)}" for m in metrics]
        lines.append("| " + " | ".join([r["method"], *cells, _cell(r["cross-view lpips (ours)"], lpips.fmt)]) + " |")
    reasons = sorted({f"{k}: {v}" for r in results for k, v in r.get("unavailable", {}).items()})
    lines += ["", f"- toy scale: tiny model, {ablation['steps_scale']:g} x the training stage budgets, "
              "same seed for every variant, benchmark = the evaluate split (reconstruction + cross-view pairs)",
              "- paper: Wan2.1 at 480p, 10K/15K/5K steps, TikTok + internet videos; the two are not comparable in "
              "value, only in ordering", *[f"- unavailable {r}" for r in reasons], ""]
    metrics_out = {}
    for r in rows:
        key = r["method"].replace("/", "").replace(".", "").replace("&", "and").strip().replace(" ", "_")
        for m in metrics:
            v = r[f"{m.name} (ours)"]
            if isinstance(v, float) and np.isfinite(v):
                metrics_out[f"{key}.{m.name}"] = {"value": v, "step": 0}
    return pd.DataFrame(rows), "\n".join(lines), metrics_out
