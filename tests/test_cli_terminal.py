"""`dimo animate` as a person runs it, in a real terminal (tmux, pane captured): the sampling progress bar with
its ETA, then the result line; a bad input is one error line and exit code 2."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time

import pytest

from tests.conftest import VENV_BIN
from tests.test_inference import AREA, store  # noqa: F401  (the tiny registered model and the test inputs)

pytestmark = pytest.mark.slow

STEPS = 12
# tqdm's bar: "animate: sampling: 100%|██████████| 12/12 [00:03<00:00,  3.9step/s]"; "<mm:ss" is the ETA.
BAR = re.compile(rf"animate: sampling:\s+\d+%\|.*\| (\d+)/{STEPS} \[\d\d:\d\d<\d\d:\d\d")


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], check=True, capture_output=True, text=True).stdout


def test_animate_in_a_terminal_shows_a_progress_bar_with_eta_and_one_line_errors(store):  # noqa: F811
    if shutil.which("tmux") is None:
        pytest.fail("tmux not found: scripts/setup.sh installs it")
    dimo = shlex.quote(str(VENV_BIN / "dimo"))
    script = (f"{dimo} animate ref.png drive24.mp4 -o term.mp4 --steps {STEPS} --target-area {AREA}; "
              f"echo EXIT=$?; {dimo} animate missing.png drive24.mp4; echo EXIT=$?; sleep 600")
    socket = f"dimo-test-{os.getpid()}"
    env = ["-e", f"MLFLOW_TRACKING_URI={store['uri']}", "-e", f"PATH={VENV_BIN}:{os.environ['PATH']}"]
    _tmux(socket, "new-session", "-d", "-x", "200", "-y", "50", "-c", str(store["root"]), *env, script)
    try:
        deadline = time.monotonic() + 300  # a budget for 2 shared cores, not an assertion on speed
        pane, seen = "", set()
        while pane.count("EXIT=") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            pane = _tmux(socket, "capture-pane", "-p", "-J")
            seen |= {int(m.group(1)) for m in BAR.finditer(pane)}
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False)
    lines = [line.rstrip() for line in pane.splitlines() if line.strip()]
    assert pane.count("EXIT=") == 2, pane
    assert STEPS in seen, pane  # the bar reached the end (and printed its ETA field on the way)
    assert "term.mp4: " in pane and "EXIT=0" in pane, pane
    errors = [line for line in lines if line.startswith("dimo animate: error:")]
    assert len(errors) == 1 and "missing.png: no such image file" in errors[0], pane
    assert lines[lines.index(errors[0]) + 1] == "EXIT=2" and "Traceback" not in pane, pane
