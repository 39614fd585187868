"""Helpers of the browser tests (tests/test_ui_*.py): a server on a free loopback port, stopped by its PID, and a
page of headless Debian Chromium driven by Playwright (never a downloaded browser).

Screenshots go to the test's tmp dir (pytest keeps those of failed tests); with `DIMO_UI_SCREENSHOTS=docs/ui` they
are also copied there: `DIMO_UI_SCREENSHOTS=docs/ui pytest tests/test_ui_*.py -m slow` refreshes docs/ui/*.png.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, VENV_BIN

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port(below: int = 65536) -> int:
    """A free loopback port; `below`: kedro-viz refuses ports above 49151 (the ephemeral range)."""
    for port in [0] if below > 65535 else random.sample(range(20000, below), 200):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return s.getsockname()[1]
    raise RuntimeError("no free loopback port")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status < 500
    except OSError:
        return False


@contextlib.contextmanager
def serve(cmd: list[str], cwd: Path, url: str, log: Path, env: dict | None = None, wait_s: float = 240.0):
    """Run `cmd` (its own process group) until `url` answers; yield; then stop the group by its PID."""
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + wait_s  # a startup budget on 2 shared cores, not an assertion on speed
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{cmd[0]} did not serve {url} (exit {proc.poll()}): {log.read_text()[-3000:]}")
            time.sleep(1)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def project_scripts(project: Path) -> None:
    """Put the project's launch scripts into a project copy, so the tests run the documented commands."""
    shutil.copytree(PROJECT_ROOT / "scripts", project / "scripts", dirs_exist_ok=True)


@contextlib.contextmanager
def chromium_page(shots: Path):
    """A headless Chromium page (1400x900); `shot(name)` saves a PNG under `shots` and returns its path."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: scripts/setup.sh installs Debian's chromium")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)

        def shot(name: str) -> Path:
            path = shots / f"{name}.png"
            page.screenshot(path=path)
            if os.environ.get("DIMO_UI_SCREENSHOTS"):
                dst = PROJECT_ROOT / os.environ["DIMO_UI_SCREENSHOTS"]
                dst.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, dst / path.name)
            return path

        page.shot = shot
        try:
            yield page
        except BaseException:
            with contextlib.suppress(Exception):
                shot("failure")  # what the page showed when the test failed (kept in the test's tmp dir)
            raise
        finally:
            browser.close()
