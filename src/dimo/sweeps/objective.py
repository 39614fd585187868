"""What a sweep trial is scored on: the evaluation pairs, the objective metric (with its fallback), the evaluator.

Scores come from `dimo.evaluation.benchmark` (the same generation and metrics as the evaluate pipeline), on the
evaluation split's view-rich pairs (`annealing_sweep.evaluation`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def evaluation_pairs(clips: pd.DataFrame, evaluation: dict) -> pd.DataFrame:
    """The benchmark pairs of `evaluation.split` of the given kinds (at most `max_pairs`); an error naming the
    settings to change when there are none."""
    from dimo.evaluation import benchmark

    kinds = tuple(evaluation["kinds"])
    pairs = benchmark.benchmark_pairs(clips, split=evaluation["split"], kinds=kinds,
                                      max_pairs=evaluation.get("max_pairs"))
    if pairs.empty:
        raise ValueError(f"annealing_sweep: the {evaluation['split']!r} split of labelled_clip_table has no "
                         f"{'/'.join(kinds)} pairs (a view-rich group needs 2+ views in that split): synthesise "
                         "more performances or change annealing_sweep.evaluation.split / kinds")
    return pairs


def choose_objective(pairs: pd.DataFrame, sweep: dict) -> tuple[str, str]:
    """(metric, direction). The metric is probed once on a target against itself; when it cannot be computed
    (LPIPS weights missing), `objective.fallback` is used with a warning, or the sweep stops with the reason.
    The choice is made before the study opens and is part of its name: a study never mixes metrics."""
    from dimo.evaluation import benchmark

    objective = sweep["objective"]
    metric, direction = objective["metric"], objective["direction"]
    check_direction(metric, direction)
    row = pairs.iloc[0]
    probe = benchmark.score(pairs.iloc[:1], {row["pair_id"]: benchmark.read_target(row["target_path"])},
                            metrics=(metric,), weights=sweep["evaluation"].get("weights") or None, progress=False)
    if np.isfinite(probe[metric].to_numpy(float)).all():
        return metric, direction
    reason = probe["unavailable"].iloc[0] or "not a finite number"
    fallback = objective.get("fallback")
    if not fallback:
        raise ValueError(f"annealing_sweep.objective.metric {metric} cannot be computed ({reason}); provide its "
                         "weights (docs/evaluation.md) or set annealing_sweep.objective.fallback")
    check_direction(fallback["metric"], fallback["direction"])
    log.warning("annealing sweep: %s cannot be computed (%s): the objective is %s (%s) instead", metric, reason,
                fallback["metric"], fallback["direction"])
    return fallback["metric"], fallback["direction"]


def check_direction(metric: str, direction: str) -> None:
    """A known per-pair metric, optimised the way it improves (benchmark.HIGHER_IS_BETTER)."""
    from dimo.evaluation import benchmark

    if metric not in benchmark.PER_PAIR_METRICS:
        raise ValueError(f"annealing_sweep.objective: unknown metric {metric!r}; one of {benchmark.PER_PAIR_METRICS}")
    better = "maximize" if benchmark.HIGHER_IS_BETTER[metric] else "minimize"
    if direction != better:
        raise ValueError(f"annealing_sweep.objective: {metric} should be {better}d, not {direction}d")


def make_evaluator(pairs: pd.DataFrame, codec, manifest: dict, evaluation: dict, metric: str) -> Callable:
    """evaluate(model) -> {metric: mean over the pairs} for the objective and the other configured metrics."""
    from dimo import inference
    from dimo.evaluation import benchmark

    metrics = tuple(dict.fromkeys([metric, *evaluation.get("metrics", [])]))
    # Not Options.from_sampling: the evaluation block has no guidance_motion (the default, 1.0, is meant).
    options = inference.Options(num_steps=int(evaluation["num_steps"]),
                                guidance_text=float(evaluation["guidance_text"]), seed=int(evaluation["seed"]),
                                target_area=evaluation.get("target_area"),
                                max_frames=evaluation.get("max_frames"), progress=False)

    def evaluate(model) -> dict:
        scores, _ = benchmark.evaluate_model(model, codec, manifest["text_encoder"], pairs, options, metrics,
                                             evaluation.get("weights") or None, progress=False,
                                             device=evaluation.get("device"))
        return {m: float(scores[m].mean()) for m in metrics}

    return evaluate
