"""Static checks that catch real mistakes cheaply: undefined names, unused imports, syntax errors."""

import subprocess

from tests.conftest import PROJECT_ROOT, VENV_BIN


def test_pyflakes_rules_pass_on_the_code():
    out = subprocess.run([str(VENV_BIN / "ruff"), "check", "--select", "F,E9", "--output-format", "concise",
                          "src", "tests", "scripts", "benchmarks"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
