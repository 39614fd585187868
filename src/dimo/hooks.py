"""Project hooks: record the git commit and the run environment on the MLflow run kedro-mlflow opens."""

from __future__ import annotations

import logging
import subprocess

import mlflow
from kedro.framework.hooks import hook_impl

log = logging.getLogger(__name__)


def git_commit(cwd: str | None = None) -> str:
    """The checked-out commit (with '-dirty' when the tree has changes), or 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class ProjectHooks:
    def __init__(self):
        self._commit: str | None = None  # this run's commit, read once
        self._tagged_run: str | None = None  # the MLflow run already tagged

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        # Once per `kedro run`: two git subprocesses are too slow to repeat before every node.
        self._commit, self._tagged_run = git_commit(), None

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async, run_id=None) -> None:
        # kedro-mlflow opens the run in its own before_pipeline_run (before or after ours): tag it on the first node.
        run = mlflow.active_run()
        if run is None or run.info.run_id == self._tagged_run or run.data.tags.get("git_commit"):
            return
        commit = self._commit or git_commit()  # a session whose before_pipeline_run did not reach us
        mlflow.set_tags({"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")})
        self._tagged_run = run.info.run_id
