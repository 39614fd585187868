"""The Optuna study's storage as a Kedro dataset (conf/base/catalog_annealing_sweep.yml: `annealing_sweep_study`).

TO MOVE: this module's two classes belong in `dimo.datasets` (where every custom dataset lives); they are kept
apart only until that file's owner merges them. Nothing here imports the rest of `dimo.sweeps`.

The study's name is derived at run time (from the objective chosen and the training setup), so the dataset does
not load one study: it loads the handle of the sqlite file that holds every study of the sweep, with the lock file
beside it that workers share. Trials are written through Optuna while the sweep runs, never by `save`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


@dataclass(frozen=True)
class StudyStorage:
    """An Optuna sqlite storage file and its inter-process lock (`<file>.lock`, one machine)."""

    path: Path
    timeout: float = 120.0  # seconds a writer waits for sqlite's lock instead of failing 'database is locked'

    @property
    def url(self) -> str:
        return f"sqlite:///{Path(self.path).resolve()}"

    @property
    def lock_path(self) -> Path:
        return Path(f"{self.path}.lock")

    def rdb(self):
        """An `optuna.storages.RDBStorage` on the file (creates the file and its schema when missing)."""
        import optuna  # lazily: the catalog builds every dataset, most runs never touch the sweep

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(self.url, engine_kwargs={"connect_args": {"timeout": self.timeout}})


class OptunaStudyDataset(AbstractDataset[None, StudyStorage]):
    """Loads the `StudyStorage` of a sqlite file (which may not exist yet: the sweep creates it). Read-only."""

    def __init__(self, filepath: str, timeout: float = 120.0, metadata: dict[str, Any] | None = None):
        self._storage = StudyStorage(Path(filepath), float(timeout))
        self.metadata = metadata

    def load(self) -> StudyStorage:
        return self._storage

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._storage.path}: the Optuna study is written by Optuna during the sweep, "
                           "not saved as a node output")

    def _exists(self) -> bool:
        return Path(self._storage.path).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._storage.path), "timeout": self._storage.timeout}
