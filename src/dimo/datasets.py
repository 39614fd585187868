"""The project's few Kedro datasets: a video file, and tables that may not exist yet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from kedro.io import AbstractDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset

from dimo import video_io

log = logging.getLogger(__name__)


class Video(NamedTuple):
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float


class VideoDataset(AbstractDataset[Video, Video]):
    """One video file: loads a `Video` (decoded RGB frames + fps), saves one as H.264 mp4 (atomically)."""

    def __init__(self, filepath: str, crf: int = 18, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._crf = crf
        self.metadata = metadata

    def load(self) -> Video:
        return Video(*video_io.read_video(self._filepath))

    def save(self, data: Video) -> None:
        video_io.write_video(self._filepath, data.frames, data.fps, crf=self._crf)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class OptionalParquetDataset(ParquetDataset):
    """A parquet table that loads as an empty frame when its file does not exist (an unused data source)."""

    def load(self) -> pd.DataFrame:
        if not self._exists():
            log.info("%s does not exist: treated as an empty table", self._filepath)
            return pd.DataFrame()
        return super().load()


class OptionalCSVDataset(CSVDataset):
    """A CSV file that loads as None when absent (e.g. the optional ingest manifest)."""

    def load(self) -> pd.DataFrame | None:
        if not self._exists():
            return None
        return super().load()
