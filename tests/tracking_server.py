"""Test helpers: a real PostgreSQL + `mlflow server` started through scripts/mlflow_server.sh, and a pickle audit."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT_ROOT / "scripts" / "mlflow_server.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """PostgreSQL (Debian's, in a temp dir, on a free loopback port) and an MLflow server over it; the MLflow server
    can be killed and started again on the same database and artifacts."""

    def __init__(self):
        # Not under pytest's tmp dirs: their parents are private to root, and PostgreSQL runs as `postgres`.
        self.dir = Path(tempfile.mkdtemp(prefix="dimo-tracking-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        env = {**os.environ, "DIMO_SERVER_DIR": str(self.dir), "PORT": str(self.port)}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.dir / "server.log", "ab") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # its own process group: killed as one
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow_server.sh exited {self.proc.returncode}: {self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"no MLflow server on {self.uri} after {timeout} s: {self.log()[-3000:]}")

    def kill(self) -> None:
        """The MLflow server dies (SIGKILL to its process group); PostgreSQL keeps running."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def close(self) -> None:
        self.kill()
        subprocess.run(["bash", str(SCRIPT), "stop"], env={**os.environ, "DIMO_SERVER_DIR": str(self.dir)},
                       capture_output=True, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.is_file() else ""


_AUDIT: list[list] = []  # the active recorders; sys.addaudithook cannot be removed, so it is installed once


def _audit(event: str, args: tuple) -> None:
    if not _AUDIT:
        return
    if event == "pickle.find_class" or (event == "open" and str(args[0]).endswith((".pkl", ".pickle"))):
        for seen in _AUDIT:
            seen.append((event, args[:2]))


@contextlib.contextmanager
def pickle_audit():
    """Records every unpickling (the `pickle.find_class` audit event, `pickle`/`cloudpickle` load calls) and
    every opened *.pkl file inside the block."""
    if not getattr(pickle_audit, "installed", False):
        sys.addaudithook(_audit)
        pickle_audit.installed = True
    seen: list = []
    _AUDIT.append(seen)
    patched = []
    import cloudpickle

    for module in (pickle, cloudpickle):
        for name in ("load", "loads"):
            original = getattr(module, name)

            def spy(*a, _original=original, _name=f"{module.__name__}.{name}", **k):
                seen.append((_name, ()))
                return _original(*a, **k)

            patched.append((module, name, original))
            setattr(module, name, spy)
    try:
        yield seen
    finally:
        _AUDIT.remove(seen)
        for module, name, original in patched:
            setattr(module, name, original)
