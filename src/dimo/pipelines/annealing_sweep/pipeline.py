from kedro.pipeline import Node, Pipeline

from .nodes import best_params, run_annealing_sweep, sweep_plots, trials_table


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(run_annealing_sweep,
                 ["annealing_sweep_study", "labelled_clip_table", "training_pairs", "latent_cache", "latent_codec",
                  "preprocess_manifest", "deepspeed_config", "params:training", "params:annealing_sweep"],
                 "annealing_sweep_summary", name="run_annealing_sweep",
                 tags=["starts_from.training.stages.stage1.init"]),  # dimo.preflight checks it exists
            Node(trials_table, ["annealing_sweep_study", "annealing_sweep_summary"], "annealing_sweep_trials",
                 name="annealing_sweep_trials"),
            Node(best_params, ["annealing_sweep_study", "annealing_sweep_summary"], "annealing_best_params",
                 name="annealing_sweep_best_params"),
            Node(sweep_plots, ["annealing_sweep_study", "annealing_sweep_summary"],
                 ["annealing_sweep_history_plot", "annealing_sweep_importance_plot"], name="annealing_sweep_plots"),
        ]
    )
