"""What every benchmark script records beside its numbers, and how it writes them (benchmarks/results/*.json)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine(**extra) -> dict:
    """The machine a number was measured on: CPUs, torch threads, load average (the cores here are shared)."""
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg_after": os.getloadavg(),
            "python": platform.python_version(), **extra}


def write(result: dict, out: str | Path) -> dict:
    """Print the result and save it as json (the folder is created)."""
    out = Path(out)
    print(json.dumps(result, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def overrides(pairs: list[str]) -> dict:
    """`--set KEY=VALUE` options -> {key: value}, each value parsed as JSON when it is JSON, else kept as text."""
    out = {}
    for pair in pairs:
        key, text = pair.split("=", 1)
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out
