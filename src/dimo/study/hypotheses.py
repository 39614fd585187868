"""The paper's claims H1-H5 as paired comparisons over the study's units, with 95% bootstrap CIs and verdicts.

A hypothesis compares a metric of one arm with the same metric of another arm (or with a reference column of the
same arm, e.g. its null-motion generation, or with 0) on the same held-out pairs and seeds. The per-seed value is
the mean paired difference over that seed's pairs; the CI is the bootstrap CI of all (seed, pair) differences
(`motion_control.paired_difference_ci`). Verdict: "holds" when the CI excludes 0 in the claimed direction, "does
not hold" when it excludes 0 the other way, "inconclusive" otherwise, "n/a" when an arm was not trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Hypothesis:
    id: str
    claim: str
    metric: str                 # a column of the unit's per-pair table (`table`)
    arm: str                    # the arm the claim is about
    against: str | None         # another arm; None: against `reference` of the same arm (or 0 without one)
    reference: str | None = None  # a reference column of `arm`'s table (e.g. pck_null)
    kinds: tuple = ("reconstruction", "cross_view")
    table: str = "pairs"        # "pairs" (gap, pose following) | "retrieval"
    higher_is_better: bool = True


HYPOTHESES = (
    Hypothesis("H1a", "the tokens carry motion: the motion-dependence gap is > 0", "gap", "full", None),
    Hypothesis("H1b", "the tokens carry motion: pose following (PCK@0.1) beats the null motion token", "pck",
               "full", None, reference="pck_null"),
    Hypothesis("H2", "cross-attention beats channel concatenation on pose following (PCK@0.1)", "pck", "full",
               "channel_concat"),
    Hypothesis("H3a", "view-rich stages beat reconstruction-only at the same steps on cross-view pose following",
               "pck", "full", "recon_only", kinds=("cross_view",)),
    Hypothesis("H3b", "view-rich stages beat reconstruction-only at the same steps on cross-view token retrieval "
               "(top-1)", "top1", "full", "recon_only", kinds=("cross_view",), table="retrieval"),
    Hypothesis("H4", "geometric supervision helps: no_geo has a smaller motion-dependence gap at equal steps", "gap",
               "full", "no_geo"),
    Hypothesis("H5", "implicit tokens beat SMPL-pose control on cross-view pose following (PCK@0.1)", "pck", "full",
               "smpl_control", kinds=("cross_view",)),
)
NOT_TESTED = {"hand encoder": "n/a: hand labels are sparse in the toy data (most frames have no valid hand), so "
                              "the no_hand arm is not trained"}


def unit_table(metrics: dict, table: str) -> pd.DataFrame:
    rows = metrics.get(table) or []
    return pd.DataFrame(rows).set_index("pair_id") if rows else pd.DataFrame()


def paired_values(h: Hypothesis, results: dict[str, dict], seeds) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (claimed arm's values, comparison values) on the pairs both have, for every seed both arms have."""
    out = {}
    for seed in seeds:
        a = results.get(f"{h.arm}-s{seed}")
        b = results.get(f"{h.against}-s{seed}") if h.against else a
        if a is None or b is None:
            continue
        ta, tb = unit_table(a, h.table), unit_table(b, h.table)
        if ta.empty or tb.empty or h.metric not in ta:
            continue
        if "kind" in ta:
            ta = ta[ta["kind"].isin(h.kinds)]
        col = h.reference or h.metric
        if h.against is None and h.reference is None:
            both = ta.index
            if len(both) == 0:
                continue
            out[seed] = (ta.loc[both, h.metric].to_numpy(float), np.zeros(len(both)))
            continue
        if col not in tb:
            continue
        both = ta.index.intersection(tb.index)
        if len(both) == 0:
            continue
        out[seed] = (ta.loc[both, h.metric].to_numpy(float), tb.loc[both, col].to_numpy(float))
    return out


def verdict(ci: dict, higher_is_better: bool = True) -> str:
    low, high = ci["ci_low"], ci["ci_high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    if not higher_is_better:
        low, high = -high, -low
    return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"


def judge(h: Hypothesis, results: dict[str, dict], seeds, bootstrap: dict) -> dict:
    """One row of results.json: metric, per-seed values (mean paired difference), mean, ci_low, ci_high, n,
    verdict, and the two sides' means."""
    from dimo.evaluation import motion_control as mc  # imported on use: the pipeline registry imports this module

    values = paired_values(h, results, seeds)
    against = h.against or (f"{h.arm} ({h.reference})" if h.reference else "0")
    row = {"id": h.id, "claim": h.claim, "metric": f"{h.metric} difference: {h.arm} - {against}",
           "pairs": ",".join(h.kinds), "seeds": sorted(values)}
    if not values:
        return row | {"per_seed": {}, "mean": None, "ci_low": None, "ci_high": None, "n": 0, "verdict": "n/a"}
    a = np.concatenate([v[0] for v in values.values()])
    b = np.concatenate([v[1] for v in values.values()])
    ci = mc.paired_difference_ci(a, b, n_boot=bootstrap["n_boot"], seed=bootstrap["seed"], level=bootstrap["level"])
    return row | {"per_seed": {str(s): float(np.nanmean(v[0] - v[1])) for s, v in values.items()},
                  "mean": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n": ci["n"],
                  "arm_mean": float(np.nanmean(a)), "against_mean": float(np.nanmean(b)),
                  "verdict": verdict(ci, h.higher_is_better)}


def table_markdown(rows: list[dict]) -> str:
    def num(v):
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:+.4f}"

    lines = ["| id | claim | metric | per seed | mean [95% CI] | n | verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{v:+.4f}" for v in r["per_seed"].values()) or "n/a"
        lines.append(f"| {r['id']} | {r['claim']} | {r['metric']} ({r['pairs']}) | {seeds} | {num(r['mean'])} "
                     f"[{num(r['ci_low'])}, {num(r['ci_high'])}] | {r['n']} | {r['verdict']} |")
    return "\n".join(lines + [""] + [f"- {k}: {v}" for k, v in NOT_TESTED.items()])
