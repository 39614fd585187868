"""Hyper-parameter sweeps over training (the annealing sweep, docs/sweeps.md), as library code the
`annealing_sweep` pipeline's nodes call:

* `study`: the Optuna study (name, open / load, trial claiming under a lock, recording a trial in MLflow); its
  sqlite file is the catalog dataset `annealing_sweep_study` (`dimo.datasets.OptunaStudyDataset`);
* `objective`: the evaluation pairs, the objective metric and the evaluator;
* `proxy`: a trial's proxy training (stage1 -> 2 -> 3 through `training.stages.run_chain`) and a worker's loop;
* `results`: the trials table, the best parameters and the plots.
"""
