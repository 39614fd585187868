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


class TrackingHooks:
    """A shared MLflow server (`MLFLOW_TRACKING_URI`, docs/tracking.md) must answer. Unreachable when the run starts:
    one line, exit 2, before kedro-mlflow opens a run or anything trains. Gone mid-run (a node fails and the server
    no longer answers): one line, exit 3; the stage's checkpoints already on disk stay, and the same command resumes
    from them once the server is back. Failing, not buffering: a run whose metrics, models and registry aliases never
    reached the store would have to be replayed by hand, while a resumed stage loses at most `checkpoint_every` steps.
    `DIMO_TRACEBACK=1` raises `TrackingError` instead."""

    def __init__(self):
        self._uri: str | None = None

    @staticmethod
    def _fail(code: int, line: str) -> None:
        import os
        import sys

        from dimo import tracking

        tracking.give_up_on_server()
        if os.environ.get("DIMO_TRACEBACK"):
            raise TrackingError(line)
        print(line, file=sys.stderr, flush=True)
        raise SystemExit(code)

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        from kedro.config import MissingConfigException

        from dimo import tracking

        try:
            self._uri = context.config_loader["mlflow"]["server"]["mlflow_tracking_uri"]
        except (KeyError, TypeError, MissingConfigException):  # no mlflow.yml: kedro-mlflow reports that itself
            self._uri = None
            return
        reason = tracking.unreachable(str(self._uri))
        if reason:
            self._fail(2, f"MLflow tracking server {self._uri} is unreachable ({reason}): start it "
                          "(bash scripts/mlflow_server.sh) or unset MLFLOW_TRACKING_URI for the local sqlite store; "
                          "nothing ran")

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        from dimo import tracking

        reason = tracking.unreachable(str(self._uri)) if self._uri else None
        if reason:
            self._fail(3, f"MLflow tracking server {self._uri} became unreachable mid-run ({reason}; the node "
                          f"failed with {type(error).__name__}): checkpoints written so far are kept, run the same "
                          "command again once the server is back to resume")


class TrackingError(RuntimeError):
    """The tracking server cannot be reached (raised instead of exiting under `DIMO_TRACEBACK=1`)."""
