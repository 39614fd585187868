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


class _StageRuns:
    """The state the two stage-run hooks share: which pipeline each node belongs to, the open nested run."""

    def __init__(self):
        self.enabled = False
        self.stage_of: dict[str, str] = {}
        self.runs: dict[str, str] = {}  # stage -> its nested run id (one per stage per `kedro run`)
        self.open: str | None = None  # the stage whose nested run is active now

    def close(self, status: str = "FINISHED") -> None:
        import mlflow

        run = mlflow.active_run()
        if self.open and run is not None and run.info.run_id == self.runs[self.open]:
            mlflow.end_run(status)
        self.open = None


_STAGE_RUNS = _StageRuns()


class StageRunOpenHooks:
    """`tracking.nested_stage_runs: true`: under the run kedro-mlflow opens for a `kedro run`, one nested run per
    pipeline stage (preprocess, each training stage, evaluate, ...) that holds the stage's params, metrics (with
    steps), artifacts and registered model version; tagged `dimo.stage`, `dimo.parent_git_commit` and, when it
    registered one, `dimo.registered_model` (`name/version`). kedro-mlflow re-activates its own run before every
    node, so the nested run is active while a node runs and its outputs are saved, and is closed (then resumed)
    around kedro-mlflow's hook: `StageRunCloseHooks` runs first, this one last."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from kedro.framework.project import pipelines

        state = _STAGE_RUNS
        state.__init__()
        state.enabled = bool((catalog.load("parameters").get("tracking") or {}).get("nested_stage_runs"))
        if state.enabled:  # a node's stage: the first registered pipeline (but the aggregate) that holds it
            for name, pipe in pipelines.items():
                for node in pipe.nodes if name != "__default__" else ():
                    state.stage_of.setdefault(node.name, name)

    @hook_impl(trylast=True)
    def before_node_run(self, node, catalog, inputs, is_async, run_id=None) -> None:
        import mlflow

        state, parent = _STAGE_RUNS, mlflow.active_run()
        if not state.enabled or parent is None:
            return
        stage = state.stage_of.get(node.name, "other")
        if stage in state.runs:
            mlflow.start_run(run_id=state.runs[stage], nested=True)
        else:
            commit = parent.data.tags.get("git_commit") or git_commit()
            run = mlflow.start_run(run_name=stage, nested=True, tags={
                "dimo.stage": stage, "dimo.parent_git_commit": commit, "git_commit": commit,
                "mlflow.source.git.commit": commit.removesuffix("-dirty")})
            state.runs[stage] = run.info.run_id
        state.open = stage
        from kedro_mlflow.framework.hooks.utils import _flatten_dict

        params = {k.removeprefix("params:"): v for k, v in inputs.items() if k.startswith("params:")}
        flat = {k: str(v)[:6000] for k, v in _flatten_dict(params).items()}
        logged = mlflow.get_run(state.runs[stage]).data.params
        mlflow.log_params({k: v for k, v in flat.items() if k not in logged})  # a param is logged once

    @hook_impl
    def after_node_run(self, node, catalog, inputs, outputs, is_async, run_id=None) -> None:
        import mlflow

        if not _STAGE_RUNS.open:
            return
        for value in outputs.values():  # a registration record (training.registry.register's dict)
            if isinstance(value, dict) and {"name", "version", "run_id"} <= set(value):
                mlflow.set_tag("dimo.registered_model", f"{value['name']}/{value['version']}")

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        _STAGE_RUNS.close()  # before kedro-mlflow ends its own run

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        try:
            _STAGE_RUNS.close("FAILED")
        except Exception as exc:  # a lost server may be why the pipeline failed: TrackingHooks says so in one line
            _STAGE_RUNS.open = None
            log.warning("could not close the nested stage run: %s", str(exc)[:200])


class StageRunCloseHooks:
    """Closes the open nested stage run before kedro-mlflow's before_node_run re-activates its own run."""

    @hook_impl(tryfirst=True)
    def before_node_run(self, node, catalog, inputs, is_async, run_id=None) -> None:
        _STAGE_RUNS.close()


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
