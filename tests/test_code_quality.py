"""Static checks that catch real mistakes cheaply: ruff with the project's rules (pyproject.toml: pyflakes,
pycodestyle, import order, bugbear, pyupgrade), the same check pre-commit runs."""

import subprocess

from tests.conftest import PROJECT_ROOT, VENV_BIN


def test_ruff_passes_on_the_code():
    out = subprocess.run([str(VENV_BIN / "ruff"), "check", "--output-format", "concise",
                          "src", "tests", "scripts", "benchmarks"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
