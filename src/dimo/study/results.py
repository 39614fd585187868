"""results.json of the study: per hypothesis (metric, per-seed values, mean, ci_low, ci_high, verdict), the
references every number needs (no-motion generation, copy-driving-pose, retrieval chance, the codec and the probe),
per-arm means, and the study's wall time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dimo.study import hypotheses
from dimo.study.units import BASE_UNIT

SCHEMA_VERSION = 1


def arm_means(units: dict[str, dict]) -> dict[str, dict]:
    """arm -> metric -> mean over its seeds (each seed's mean over pairs)."""
    rows = [{"arm": m["arm"], "seed": m["seed"], **m.get("summary", {})} for n, m in units.items() if n != BASE_UNIT]
    if not rows:
        return {}
    table = pd.DataFrame(rows).drop(columns="seed").groupby("arm").mean(numeric_only=True)
    return {arm: {k: float(v) for k, v in row.items() if np.isfinite(v)} for arm, row in table.iterrows()}


def curves(units: dict[str, dict]) -> dict[str, dict]:
    """unit -> {steps: {gap}}: the motion-dependence gap after each stage."""
    return {n: m["curve"] for n, m in units.items() if m.get("curve")}


def study_results(run: dict, study: dict) -> tuple[dict, str, dict]:
    """(results.json, the hypothesis table in markdown, MLflow metrics of the parent run)."""
    rows = [hypotheses.judge(h, run["units"], study["seeds"], study["bootstrap"]) for h in hypotheses.HYPOTHESES]
    refs = run["references"]
    results = {
        "schema_version": SCHEMA_VERSION,
        "hypotheses": rows,
        "not_tested": hypotheses.NOT_TESTED,
        "seeds": list(study["seeds"]),
        "arms": arm_means(run["units"]),
        "curves": curves(run["units"]),
        "codec": {"psnr_db": refs["psnr_db"], "ssim": refs["ssim"], "clips": refs["clips"]},
        "probe": {k: v for k, v in refs.items() if k.startswith("probe_")},
        "wall_time_s": run["wall_seconds"],
        "runs": run["runs"],
        "units": sorted(run["units"]),
    }
    md = "\n".join(["## Study: the paper's claims at toy scale", "",
                    f"seeds {list(study['seeds'])}; codec {refs['psnr_db']:.2f} dB PSNR / {refs['ssim']:.3f} SSIM "
                    f"on the held-out clips; pose probe PCK@0.1 {refs['probe_pck_renders']:.3f} on renders, "
                    f"{refs['probe_pck_codec']:.3f} on codec reconstructions; wall time "
                    f"{run['wall_seconds'] / 60:.1f} min", "", hypotheses.table_markdown(rows), ""])
    metrics = {f"study.{r['id']}.mean": {"value": r["mean"], "step": 0} for r in rows if r["mean"] is not None}
    metrics |= {"study.wall_time_s": {"value": run["wall_seconds"], "step": 0},
                "study.codec_psnr_db": {"value": refs["psnr_db"], "step": 0}}
    return results, md, metrics
