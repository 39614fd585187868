"""The GPU check (benchmarks/gpu_check.sh) in its dry run: the same script at tiny sizes on the CPU, as CI runs it.
Every check must print a PASS line and the results json must say the same."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT

CHECKS = ("stage_bf16_zero2", "kill_and_resume", "convert", "device_tests", "mfu", "time")


@pytest.mark.slow
def test_the_gpu_check_dry_run_passes_every_check_and_writes_its_results(tmp_path):
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--results-dir", str(tmp_path)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    lines = [line for line in out.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert [line.split()[1] for line in lines] == list(CHECKS), out.stdout[-3000:] + out.stderr[-3000:]
    failed = [line for line in lines if not line.startswith("PASS ")]
    assert not failed and out.returncode == 0, "\n".join(failed) + out.stderr[-3000:]
    (written,) = tmp_path.glob("gpu_check-*-dry-run.json")
    result = json.loads(written.read_text())
    assert result["dry_run"] and result["passed"]
    assert [(c["name"], c["passed"]) for c in result["checks"]] == [(name, True) for name in CHECKS]
    resume = next(c for c in result["checks"] if c["name"] == "kill_and_resume")
    assert resume["data"]["resumed"]["resumed_at"] == result["sizes"]["steps"] // 2  # it resumed, mid-run
    mfu = next(c for c in result["checks"] if c["name"] == "mfu")["data"]
    assert mfu["flops_per_step"] > 0 and 0 < mfu["mfu"] < 1
