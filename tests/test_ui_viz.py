"""kedro-viz in a real browser: `scripts/viz.sh` on the smoke chain's project lists the registered pipelines and
draws the nodes of train_stage2."""

from __future__ import annotations

import pytest

from dimo.training.stages import STAGES
from tests.browser import chromium_page, free_port, project_scripts, serve

pytestmark = pytest.mark.slow


def test_kedro_viz_lists_pipelines_and_the_nodes_of_train_stage2(smoke_chain, tmp_path):
    project_scripts(smoke_chain)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve(["bash", "scripts/viz.sh", str(port)], smoke_chain, f"{url}/api/main", tmp_path / "viz.log"), \
            chromium_page(tmp_path / "shots") as page:
        page.goto(url)
        page.get_by_text("__default__").first.click()  # the pipeline menu
        options = page.get_by_role("option")
        names = {options.nth(i).inner_text().strip() for i in range(options.count())}
        assert {"__default__", "preprocess", "evaluate", *(s.pipeline for s in STAGES)} <= names, names
        page.get_by_role("option", name="train_stage2").click()
        sidebar = page.locator(".pipeline-nodelist__list")
        sidebar.get_by_text("register_stage2", exact=True).wait_for()
        page.shot("kedro_viz_train_stage2")
        listed = sidebar.inner_text()
        assert "train_stage2" in listed and "register_stage2" in listed
        assert "train_stage1" not in listed.split()  # the sidebar shows the chosen pipeline, not the default one
        # the flowchart draws them too
        assert page.locator("svg .pipeline-node", has_text="train_stage2").count() >= 1
