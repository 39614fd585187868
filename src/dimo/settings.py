"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from dimo.hooks import PreflightHooks, ProjectHooks, StageRunCloseHooks, StageRunOpenHooks, VideoPreviewHooks

HOOKS = (PreflightHooks(), ProjectHooks(), VideoPreviewHooks(), StageRunOpenHooks(), StageRunCloseHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # parameters_<pipeline>.yml files are picked up by the default "parameters*" pattern;
    # mlflow.yml is read by kedro-mlflow.
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
}
