"""The study (docs/study.md): the toy 3DiMo model trained long enough to use its motion, and the paper's claims
H1-H5 tested over seeds with bootstrap CIs. `units` (what trains, where it is saved), `runner` (train + measure,
resumable), `measure` (the motion-control metrics per unit), `hypotheses` (H1-H5, verdicts), `results`
(results.json)."""
