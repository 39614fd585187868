"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from dimo import tracking
from dimo.hooks import (
    PreflightHooks,
    ProjectHooks,
    StageRunCloseHooks,
    StageRunOpenHooks,
    TrackingHooks,
    VideoPreviewHooks,
)

HOOKS = (PreflightHooks(), ProjectHooks(), TrackingHooks(), VideoPreviewHooks(), StageRunOpenHooks(),
         StageRunCloseHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # parameters_<pipeline>.yml files are picked up by the default "parameters*" pattern;
    # mlflow.yml is read by kedro-mlflow.
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
    # ${tracking_uri:<default>} in mlflow.yml: MLFLOW_TRACKING_URI when set (a shared server), else the default
    "custom_resolvers": {"tracking_uri": tracking.tracking_uri},
}
