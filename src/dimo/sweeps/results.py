"""What a finished (or growing) study reports: the trials table, the best parameters, and the plots
(optuna.visualization.matplotlib). Each reads the whole study, every worker's trials."""

from __future__ import annotations

import json
import logging
import warnings

import mlflow
import optuna
import pandas as pd
from optuna.trial import TrialState

log = logging.getLogger(__name__)


def trials_table(study: optuna.Study, metric: str) -> pd.DataFrame:
    """Every trial of the study: number, state, value, parameters, per-stage values, MLflow run."""
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "intermediate_values",
                                          "user_attrs", "datetime_start", "duration"))
    if "duration" in table:
        table["duration"] = table["duration"].dt.total_seconds()
    table = table.rename(columns={"duration": "seconds"})
    for column in [c for c in table.columns if table[c].map(lambda v: isinstance(v, dict)).any()]:
        table[column] = table[column].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
    table.insert(0, "study", study.study_name)
    table["metric"] = metric
    return table


def best_params(study: optuna.Study, info: dict) -> dict:
    """The best complete trial's schedule in the full training's units, for `training.geometric_loss_from_sweep`;
    also logged to the active MLflow run. `info`: what the sweep node returned (storage, objective)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"study {study.study_name} has no complete trial (all pruned or failed): no best "
                         "parameters; see the trials table and the MLflow trial runs")
    best = study.best_trial
    out = {"study": study.study_name, "storage": info["storage"], "trial": best.number,
           "objective": {"metric": info["metric"], "direction": info["direction"], "value": float(best.value),
                         "split": info["split"], "kinds": info["kinds"], "pairs": info["pairs"]},
           "trials": {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
                      for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
           "geometric_loss": {"start": float(best.params["start"]), "end_step": int(best.params["end_step"]),
                              "shape": best.params["shape"]}}
    if "lr" in best.params:
        out["lr"] = float(best.params["lr"])
    if mlflow.active_run() is not None:
        mlflow.log_dict(out, "annealing_sweep/best_params.yml")
        mlflow.log_metrics({"annealing_sweep.best_value": float(best.value), "annealing_sweep.best_trial": best.number,
                            **{f"annealing_sweep.trials_{k}": v for k, v in out["trials"].items()}})
    log.info("annealing sweep: best trial %d, %s = %.4g, schedule %s%s", best.number, info["metric"], best.value,
             out["geometric_loss"], f", lr {out['lr']:.3g}" if "lr" in out else "")
    return out


def _note_figure(title: str, note: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
    return fig


def sweep_plots(study: optuna.Study, metric: str) -> tuple:
    """Optimisation history and parameter importances (optuna.visualization.matplotlib). Importances need 2+
    complete trials whose parameters differ; with fewer the figure says so and a note is logged."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = ovm.plot_optimization_history(study, target_name=metric).figure
        history.tight_layout()
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        varied = len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2
        importance = None
        if varied:
            try:
                importance = ovm.plot_param_importances(study, target_name=metric).figure
                importance.tight_layout()
            except (ValueError, RuntimeError) as err:  # e.g. every trial has the same value
                note = f"parameter importances unavailable: {err}"
        else:
            note = (f"parameter importances need at least 2 complete trials with different parameters "
                    f"(the study has {len(complete)} complete)")
    if importance is None:
        log.info("annealing sweep: %s", note)
        importance = _note_figure("Parameter importances", note)
    return history, importance
