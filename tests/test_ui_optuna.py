"""optuna-dashboard in a real browser: `scripts/optuna_dashboard.sh` finds the sweep's sqlite study through the
catalog and shows the study with its trials. The study is a tiny one made here (the sweep's own trials train
models: test_annealing_sweep.py covers them); its parameters are the sweep's."""

from __future__ import annotations

import pytest

from tests.browser import chromium_page, free_port, serve

pytestmark = pytest.mark.slow


def _tiny_study(db) -> str:
    import optuna

    db.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="annealing_sweep-ui-test", direction="minimize")

    def objective(trial):
        start = trial.suggest_float("start", 0.01, 1.0, log=True)
        end_step = trial.suggest_int("end_step", 2, 12)
        shape = trial.suggest_categorical("shape", ["linear", "cosine"])
        return (start - 0.1) ** 2 + 0.01 * end_step + (shape == "cosine") * 0.05

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=6)
    return study.study_name


def test_optuna_dashboard_shows_the_study_and_its_trials(project_copy, tmp_path):
    name = _tiny_study(project_copy / "data" / "06_models" / "optuna" / "annealing_sweep.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve(["bash", "scripts/optuna_dashboard.sh", str(port)], project_copy, f"{url}/api/studies",
               tmp_path / "dashboard.log"), chromium_page(tmp_path / "shots") as page:
        page.goto(f"{url}/dashboard")
        page.get_by_text(name).first.wait_for()
        page.shot("optuna_dashboard_studies")
        page.get_by_text(name).first.click()
        page.wait_for_url("**/studies/1**")
        page.locator(".js-plotly-plot").first.wait_for()  # the optimisation history chart
        page.shot("optuna_dashboard")
        page.goto(f"{url}/dashboard/studies/1/trials")  # the trial list: one entry per trial
        page.get_by_text("Trial 5").first.wait_for()
        body = page.inner_text("body")
        assert all(f"Trial {n}" in body for n in range(6)), body[:2000]
        assert "6 Trials" in body and "end_step" in body and "shape" in body
        page.shot("optuna_dashboard_trials")
