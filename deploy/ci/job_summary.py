"""A GitHub job summary for one DVC stage: its metrics as markdown tables (called by .github/workflows/train.yml).

    python deploy/ci/job_summary.py <stage> >> "$GITHUB_STEP_SUMMARY"

Reads the stage's outputs from dvc.yaml: each JSON output's numbers (flattened keys), each markdown report as is,
and for a training stage its summary (`data/06_models/<key>_summary.json`, dimo.training.stages names the key).
Missing files are listed, not fatal: a failed or cancelled job still gets a summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MAX_ROWS = 60


def stage_files(stage: str, root: Path = ROOT) -> list[Path]:
    """The JSON and markdown files among `stage`'s dvc.yaml outputs (folders searched), plus a training stage's
    summary; raises KeyError for a stage dvc.yaml does not have."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    if stage not in stages:
        raise KeyError(f"dvc.yaml has no stage {stage!r} (stages: {', '.join(stages)})")
    files = []
    for out in stages[stage].get("outs", []):
        path = root / (next(iter(out)) if isinstance(out, dict) else out)
        files += sorted(path.rglob("*")) if path.is_dir() else [path]
    from dimo.training.stages import STAGES  # a training stage's summary is not a DVC output

    files += [root / f"data/06_models/{s.key}_summary.json" for s in STAGES if s.pipeline == stage]
    return [f for f in files if f.suffix in (".json", ".md") and "registration" not in f.name]


def flatten(value, prefix: str = "") -> dict:
    """Numbers, booleans and short strings of a JSON value by dotted key; lists and long text are skipped."""
    if isinstance(value, dict):
        rows = {}
        for key, item in value.items():
            rows.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 80):
        return {prefix: value}
    return {}


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def summary(stage: str, root: Path = ROOT) -> str:
    lines = [f"## `{stage}`", ""]
    for path in stage_files(stage, root):
        rel = path.relative_to(root)
        if not path.is_file():
            lines += [f"- `{rel}`: not written", ""]
        elif path.suffix == ".md":
            lines += [f"### `{rel}`", "", path.read_text().strip(), ""]
        else:
            rows = list(flatten(json.loads(path.read_text())).items())
            lines += [f"### `{rel}`", "", "| metric | value |", "| --- | --- |"]
            lines += [f"| {k} | {_cell(v)} |" for k, v in rows[:MAX_ROWS]]
            lines += [f"| ... | {len(rows) - MAX_ROWS} more |"] if len(rows) > MAX_ROWS else []
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python deploy/ci/job_summary.py <dvc stage>")
    try:
        print(summary(sys.argv[1]))
    except KeyError as err:
        sys.exit(f"deploy/ci/job_summary.py: {err.args[0]}")
