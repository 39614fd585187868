"""Shared pieces of the metrics library: the "metric unavailable" result, the missing-weights error, paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# src/dimo/evaluation/common.py -> project root; default weight folders live under <root>/.cache/weights.
PROJECT_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class MetricUnavailable:
    """A metric that could not be computed (weights missing, too few samples...): never a made-up number."""

    metric: str
    reason: str

    def __str__(self) -> str:
        return f"{self.metric} unavailable: {self.reason}"


class WeightsNotFound(FileNotFoundError):
    """A network's weight file is absent; the message says which file and how to get it."""

    def __init__(self, metric: str, path: Path, how_to: str):
        self.metric, self.path, self.how_to = metric, Path(path), how_to
        super().__init__(f"{metric}: weight file not found at {self.path} ({how_to})")


def resolve(path: str | Path) -> Path:
    """Relative paths are taken from the project root, so results do not depend on the working directory."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path
