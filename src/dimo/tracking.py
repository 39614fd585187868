"""Which MLflow tracking store a run talks to, and whether it answers (docs/tracking.md).

One machine: the project's sqlite store `mlflow.db` (the default). A team: a shared `mlflow server` (PostgreSQL
backend, artifacts in a folder or object store; `scripts/mlflow_server.sh`), chosen with `MLFLOW_TRACKING_URI`.
kedro-mlflow reads the URI through the `${tracking_uri:<default>}` resolver (conf/base/mlflow.yml), the mlflow CLI
and `dimo.inference` read the same variable, so one `export` moves the whole project.

No MLflow import here: `settings.py` imports this module, and Kedro's startup stays light.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

DEFAULT_URI = "sqlite:///mlflow.db"  # relative: kedro-mlflow anchors it at the project folder
ENV_VAR = "MLFLOW_TRACKING_URI"


def tracking_uri(default: str = DEFAULT_URI) -> str:
    """`MLFLOW_TRACKING_URI` when set (a shared server), else `default` (the project's sqlite store)."""
    return os.environ.get(ENV_VAR) or default


def is_server(uri: str) -> bool:
    """An MLflow tracking server (over HTTP), as opposed to a database or folder on this machine."""
    return uri.startswith(("http://", "https://"))


def unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """None when the store can be reached, else a short reason. Only servers can be unreachable; any HTTP answer
    (also 401/403) counts as reachable: credentials are MLflow's to report, with its own message."""
    if not is_server(uri):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as err:  # URLError, refused, reset, timeout, a malformed URI
        reason = getattr(err, "reason", None) or err
        return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason


def give_up_on_server() -> None:
    """Called once the server is known to be gone: MLflow's own calls on the way out (its atexit `end_run`) fail
    at once instead of retrying with backoff for minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
