"""Pipeline `annealing_sweep`: an Optuna study over the geometric-loss anneal of training (docs/sweeps.md).
Not in the default chain: `kedro run --pipelines=annealing_sweep`."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
