"""Project hooks: record the git commit and the run environment on the MLflow run kedro-mlflow opens."""

from __future__ import annotations

import logging
import subprocess

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
        import mlflow  # here, not at import: `kedro` startup (settings -> hooks) stays light for the preflight

        # kedro-mlflow opens the run in its own before_pipeline_run (before or after ours): tag it on the first node.
        run = mlflow.active_run()
        if run is None or run.info.run_id == self._tagged_run or run.data.tags.get("git_commit"):
            return
        commit = self._commit or git_commit()  # a session whose before_pipeline_run did not reach us
        mlflow.set_tags({"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")})
        self._tagged_run = run.info.run_id


class PreflightError(RuntimeError):
    """A run that cannot start: the message is one line naming what is missing and the command that makes it."""


class PreflightHooks:
    """Before any node runs: check that the run's free inputs and starting models exist (`dimo.preflight`); if not,
    print one line and exit 2. `DIMO_TRACEBACK=1` (or `kedro -v`) raises `PreflightError` instead, with its
    traceback. Ordered first, so kedro-mlflow opens no run for a run that cannot start."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        import os
        import sys
        from pathlib import Path

        import yaml
        from kedro.framework.project import pipelines

        from dimo import preflight

        registered = dict(pipelines)
        problems, order = preflight.plan(pipeline, catalog, catalog.load("parameters"), registered)
        if not problems:
            return
        names = run_params.get("pipeline_names") or ["__default__"]
        dvc_file = Path(run_params.get("project_path") or ".") / "dvc.yaml"
        dvc_stages = set(yaml.safe_load(dvc_file.read_text())["stages"]) if dvc_file.is_file() else set()
        line = preflight.message(",".join(names), problems, order, run_params.get("env"), dvc_stages)
        if os.environ.get("DIMO_TRACEBACK") or {"-v", "--verbose"} & set(sys.argv):
            raise PreflightError(line)
        print(line, file=sys.stderr, flush=True)
        raise SystemExit(2)


class VideoPreviewHooks:
    """After each node: every mp4 the active MLflow run holds gets a GIF preview and a PNG contact sheet beside
    it (`dimo.previews`), whichever code logged it (a node, or a kedro-mlflow artifact dataset)."""

    @hook_impl
    def after_node_run(self, node, catalog, inputs, outputs, is_async, run_id=None) -> None:
        self._log()  # mp4s a node logged itself (training's sample grids)

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node) -> None:
        # Outputs are saved after after_node_run: an MlflowArtifactDataset of a video has logged its mp4 only now.
        if hasattr(data, "frames") and hasattr(data, "fps"):
            self._log()

    @staticmethod
    def _log() -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        from dimo import previews

        done = previews.log_missing_previews()
        if done:
            log.info("previews logged for %s", ", ".join(done))
