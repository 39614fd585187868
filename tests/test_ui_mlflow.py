"""The MLflow UI in a real browser, on the smoke chain's store through `scripts/mlflow_ui.sh`: the training run,
its loss chart over steps, the registered model `dimo` with its aliases, and a GIF preview the artifact viewer
displays inline (dimo.previews)."""

from __future__ import annotations

import contextlib

import pytest

from tests.browser import chromium_page, free_port, project_scripts, serve

pytestmark = pytest.mark.slow


def _training_run(project):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    # the chain's own run: other tests run pipelines on the shared chain (the ablation also logs stage2.loss)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    default = {r.info.run_id for r in runs if r.info.run_name == "__default__"}
    runs = [r for r in runs if "stage2.loss" in r.data.metrics and r.data.tags.get("mlflow.parentRunId") in default]
    assert runs, "the smoke chain's __default__ run has no nested train_stage2 run with stage2.loss"
    aliases = client.get_registered_model("dimo").aliases
    return runs[0], client.list_artifacts(runs[0].info.run_id, "samples/stage2"), aliases


def _close_assistant(page) -> None:
    with contextlib.suppress(Exception):  # MLflow 3's side panel; only hides part of the screenshots
        page.locator("[data-component-id='mlflow.assistant.chat_panel.close']").click(timeout=5000)


def test_mlflow_ui_shows_the_run_its_loss_chart_the_model_and_a_gif(smoke_chain, tmp_path):
    run, samples, aliases = _training_run(smoke_chain)
    gif = next(f.path for f in samples if f.path.endswith(".preview.gif"))
    assert {"stage1", "stage2", "stage3"} <= set(aliases), aliases
    project_scripts(smoke_chain)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exp, run_id = run.info.experiment_id, run.info.run_id
    with serve(["bash", "scripts/mlflow_ui.sh"], smoke_chain, f"{url}/health", tmp_path / "mlflow.log",
               env={"PORT": str(port)}), chromium_page(tmp_path / "shots") as page:
        page.goto(f"{url}/#/experiments/{exp}/runs/{run_id}")
        page.get_by_text(run.info.run_name, exact=True).first.wait_for()
        page.get_by_text(f"Metrics ({len(run.data.metrics)})").wait_for()
        _close_assistant(page)
        page.shot("mlflow_run")

        page.goto(f"{url}/#/experiments/{exp}/runs/{run_id}/model-metrics")
        page.get_by_placeholder("Search metric charts").fill("stage2.loss")
        page.get_by_text(f"{run.info.run_name} (stage2.loss)").wait_for()  # a line chart's legend: one per step
        page.locator("main").get_by_text("Step", exact=True).first.wait_for()  # the x axis: drawn after the legend
        chart_text = page.locator("main").inner_text()
        assert "Step" in chart_text and "(1)" in chart_text, chart_text[:1000]
        page.shot("mlflow_loss_chart")

        page.goto(f"{url}/#/models/dimo")
        for alias in aliases:
            page.get_by_text(f"@ {alias}", exact=True).or_(page.get_by_text(alias, exact=True)).first.wait_for()
        page.shot("mlflow_model_dimo")

        page.goto(f"{url}/#/experiments/{exp}/runs/{run_id}/artifacts")
        page.get_by_text("samples", exact=True).click()
        page.get_by_text("stage2", exact=True).click()
        page.get_by_text(gif.rsplit("/", 1)[1], exact=True).click()
        image = page.locator("img[src^='blob:']").first
        image.wait_for()
        width, height = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
        assert width > 0 and height > 0  # the browser decoded the GIF
        page.shot("mlflow_gif_preview")
