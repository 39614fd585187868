"""The project's few Kedro datasets: a video file, and tables that may not exist yet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from kedro_datasets.partitions import PartitionedDataset

from dimo import video_io

log = logging.getLogger(__name__)


class Video(NamedTuple):
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float


class VideoDataset(AbstractDataset[Video, Video]):
    """One video file: loads a `Video` (decoded RGB frames + fps), saves one as H.264 mp4 (atomically)."""

    def __init__(self, filepath: str, crf: int = 18, lossless: bool = False, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._crf, self._lossless = crf, lossless
        self.metadata = metadata

    def load(self) -> Video:
        return Video(*video_io.read_video(self._filepath))

    def save(self, data: Video) -> None:
        video_io.write_video(self._filepath, data.frames, data.fps, crf=self._crf, lossless=self._lossless)

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


class SafetensorsDataset(AbstractDataset[dict, dict]):
    """A dict of tensors in one .safetensors file (the latent cache); written atomically."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self._filepath))

    def save(self, data: dict) -> None:
        import os
        import tempfile

        from safetensors.torch import save_file

        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=self._filepath.parent)
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in data.items()}, tmp)
            os.replace(tmp, self._filepath)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class _FolderDataset(AbstractDataset):
    """A model saved as a folder; written into a temp folder and renamed, so a failed save keeps the old one."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def _save_to(self, data, folder: Path) -> None:
        raise NotImplementedError

    def save(self, data) -> None:
        import shutil
        import tempfile

        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self._path.name}-", dir=self._path.parent))
        try:
            self._save_to(data, tmp)
            old = self._path.with_name(f".{self._path.name}-old")
            if self._path.exists():
                self._path.rename(old)
            tmp.rename(self._path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class LatentCodecDataset(_FolderDataset):
    """The video VAE (`dimo.models.LatentCodec`), laid out like a Wan diffusers folder (`<path>/vae`)."""

    def load(self):
        from dimo.models import LatentCodec

        return LatentCodec.from_pretrained(str(self._path), subfolder="vae")

    def _save_to(self, codec, folder: Path) -> None:
        codec.vae.save_pretrained(str(folder / "vae"))


class DimoModelDataset(_FolderDataset):
    """A whole 3DiMo model (`DimoModel.save_pretrained`: safetensors + config json per part)."""

    def load(self):
        from dimo.models import DimoModel

        return DimoModel.from_pretrained(str(self._path))

    def _save_to(self, model, folder: Path) -> None:
        model.save_pretrained(str(folder))


class OptionalJSONDataset(AbstractDataset[dict, dict]):
    """A JSON file that loads as None when absent (a previous stage's registration that may not exist yet)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict | None:
        import json

        return json.loads(self._filepath.read_text()) if self._filepath.is_file() else None

    def save(self, data: dict) -> None:
        import json
        import os

        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._filepath.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class Absent:
    """What an optional file loads as when it does not exist: falsy, and it knows the path for error messages."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Absent({self.path!r})"


class OptionalYAMLDataset(AbstractDataset[dict, dict]):
    """A YAML file that loads as a falsy `Absent(path)` when it does not exist (the annealing sweep's best
    parameters, which training reads only when asked to, and then names the missing path)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict | Absent:
        import yaml

        if not self._filepath.is_file():
            return Absent(self._filepath)
        return yaml.safe_load(self._filepath.read_text()) or {}

    def save(self, data: dict) -> None:
        import os

        import yaml

        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._filepath.with_name(f".{self._filepath.name}.{os.getpid()}.tmp")  # atomic: readers never see half
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class OptionalPartitionedDataset(PartitionedDataset):
    """A folder of partitions that may be empty (no user videos yet): loads as {} instead of failing."""

    def load(self) -> dict:
        try:
            return super().load()
        except DatasetError as err:
            if "No partitions found" not in str(err):
                raise
            log.info("%s holds no files: treated as empty", self._path)
            return {}
