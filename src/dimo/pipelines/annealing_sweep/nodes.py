"""Nodes of the annealing sweep (issue 8, docs/sweeps.md): thin calls into `dimo.sweeps`.

`annealing_sweep_study` is the catalog's `OptunaStudyDataset`: the sqlite storage every worker shares. The first
node runs this worker's share of the trials and returns what the export nodes need to find the study again.
"""

from __future__ import annotations

import pandas as pd

from dimo.datasets import StudyStorage
from dimo.sweeps import proxy, results
from dimo.sweeps import study as sweep_study


def run_annealing_sweep(storage: StudyStorage, clips: pd.DataFrame, pairs: pd.DataFrame, cache: dict, codec,
                        manifest: dict, deepspeed_config: dict, training: dict, sweep: dict) -> dict:
    """Trials until the study holds `annealing_sweep.n_trials` finished ones (other workers' included).

    Returns:
        The study's name and storage file, the objective (metric, direction, split, kinds, pairs), n_trials.
    """
    return proxy.run_worker(storage, clips, pairs, cache, codec, manifest, deepspeed_config, training, sweep)


def trials_table(storage: StudyStorage, info: dict) -> pd.DataFrame:
    """Every trial of the study, all workers (`annealing_sweep_trials`)."""
    return results.trials_table(sweep_study.load_study(storage, info["study_name"]), info["metric"])


def best_params(storage: StudyStorage, info: dict) -> dict:
    """The best complete trial's schedule (`annealing_best_params`, read by train_stage1..3)."""
    return results.best_params(sweep_study.load_study(storage, info["study_name"]), info)


def sweep_plots(storage: StudyStorage, info: dict) -> tuple:
    """Optimisation history and parameter importances figures."""
    return results.sweep_plots(sweep_study.load_study(storage, info["study_name"]), info["metric"])
