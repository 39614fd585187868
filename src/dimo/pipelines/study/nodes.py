"""Nodes of `study` (docs/study.md): the study's training pairs, every unit trained and measured (resumable: the
units live in `study.output_dir`), then results.json and the hypothesis table. The work is in `dimo.study`."""

from __future__ import annotations

import pandas as pd

from dimo.study import results, runner


def study_pairs(clips: pd.DataFrame, training: dict) -> pd.DataFrame:
    """The candidate training pairs of the study's stage mixes (train split only)."""
    return runner.pairs_for(clips, training)


def run_study(pairs: pd.DataFrame, cache: dict, codec, manifest: dict, deepspeed_config: dict, clips: pd.DataFrame,
              synthetic_clips: dict, ground_truth: dict, training: dict, study: dict) -> dict:
    """Train and measure every unit that is not done yet; -> every unit's metrics and the references."""
    return runner.run_study(pairs, cache, codec, manifest, deepspeed_config, clips, synthetic_clips, ground_truth,
                            training, study)


def study_results(run: dict, study: dict) -> tuple[dict, str, dict]:
    """results.json, the hypothesis table (markdown) and the parent run's metrics."""
    return results.study_results(run, study)
