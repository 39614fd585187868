"""kedro-viz in a real browser: `scripts/viz.sh` on the smoke chain's project lists the registered pipelines and
draws the nodes of train_stage2."""

from __future__ import annotations

import contextlib

import pytest

from dimo.pipelines.training import stage_pipeline
from dimo.training.stages import STAGES, get
from tests.browser import chromium_page, free_port, project_scripts, serve

pytestmark = pytest.mark.slow


def test_kedro_viz_lists_pipelines_and_the_nodes_of_train_stage2(smoke_chain, tmp_path):
    project_scripts(smoke_chain)
    port = free_port(below=49152)  # kedro-viz refuses the ephemeral range
    url = f"http://127.0.0.1:{port}"
    with serve(["bash", "scripts/viz.sh", str(port)], smoke_chain, f"{url}/api/main", tmp_path / "viz.log"), \
            chromium_page(tmp_path / "shots") as page:
        page.goto(url)
        page.get_by_text("__default__").first.click()  # the pipeline menu
        options = page.get_by_role("option")
        names = {options.nth(i).inner_text().strip() for i in range(options.count())}
        assert {"__default__", "preprocess", "evaluate", *(s.pipeline for s in STAGES)} <= names, names
        page.get_by_role("option", name="train_stage2").click()
        expected = {n.name for n in stage_pipeline(get("stage2")).nodes}
        for name in expected:  # listed in the sidebar and drawn in the flowchart
            page.locator(f"[data-test='node-list-tree-item--row--{name}']").wait_for()
            page.locator(f"g.pipeline-node--task[data-node-fullname='{name}']").wait_for()
        # and only them: the default pipeline's nodes leave the flowchart
        page.locator("g.pipeline-node--task[data-node-fullname='train_stage1']").wait_for(state="detached")
        with contextlib.suppress(Exception):  # the feature tour and the update banner cover part of the screenshot
            page.locator(".feature-hints__close").click(timeout=3000)
            page.locator(".update-reminder-unexpanded").get_by_text("Dismiss").click(timeout=3000)
        page.shot("kedro_viz_train_stage2")
