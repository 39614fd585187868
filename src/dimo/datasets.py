"""The project's Kedro datasets, all in this one module: a video file, an .npz file, the label cache folder,
tensors and model folders, the Optuna study's storage, and the optional files and folders that may not exist yet.

Optional datasets (`Optional*`) share one behaviour: `load()` returns None when the file or folder does not
exist (logged at INFO with the path), so callers test `is None`; saving works as for the plain dataset."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from kedro_datasets.partitions import PartitionedDataset

from dimo import npz_io, video_io

log = logging.getLogger(__name__)


class Video(NamedTuple):
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    encoded: bytes | None = None  # the file's bytes when loaded from one (the label cache keys on them)


class VideoDataset(AbstractDataset[Video, Video]):
    """One video file: loads a `Video` (decoded RGB frames + fps), saves one as H.264 mp4 (atomically)."""

    def __init__(self, filepath: str, crf: int = 18, lossless: bool = False, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._crf, self._lossless = crf, lossless
        self.metadata = metadata

    def load(self) -> Video:
        return Video(*video_io.read_video(self._filepath), encoded=self._filepath.read_bytes())

    def save(self, data: Video) -> None:
        video_io.write_video(self._filepath, data.frames, data.fps, crf=self._crf, lossless=self._lossless)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class SafetensorsDataset(AbstractDataset[dict, dict]):
    """A dict of tensors in one .safetensors file (the latent cache); written atomically. String values are
    written as the file's header metadata (`header()`), e.g. the cache key of a latent cache entry."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self._filepath))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's shape, read from the file header only (the training loader's size buckets)."""
        from safetensors import safe_open

        with safe_open(str(self._filepath), "pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}

    def header(self) -> dict[str, str]:
        """The file's header metadata (the string values it was saved with), without reading any tensor."""
        from safetensors import safe_open

        with safe_open(str(self._filepath), "pt") as f:
            return f.metadata() or {}

    def save(self, data: dict) -> None:
        import os
        import tempfile

        from safetensors.torch import save_file

        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=self._filepath.parent)
        os.close(fd)
        try:
            tensors = {k: v.contiguous() for k, v in data.items() if not isinstance(v, str)}
            save_file(tensors, tmp, metadata={k: v for k, v in data.items() if isinstance(v, str)} or None)
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


class MotionTokenizerDataset(DimoModelDataset):
    """The MTVCrafter-style 4DMoT baseline (`dimo.baselines.motion_tokenizer.MotionTokenizer`, one folder)."""

    def load(self):
        from dimo.baselines.motion_tokenizer import MotionTokenizer

        return MotionTokenizer.from_pretrained(str(self._path))




class NpzDataset(AbstractDataset[dict, dict]):
    """One .npz file <-> a dict of numpy arrays, byte-reproducible (`dimo.npz_io.save_npz`)."""

    def __init__(self, filepath: str, compress: bool = True, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._compress = compress
        self.metadata = metadata

    def load(self) -> dict[str, np.ndarray]:
        return npz_io.load_npz(self._filepath)

    def save(self, data: dict[str, Any]) -> None:
        npz_io.save_npz(self._filepath, data, self._compress)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "compress": self._compress}


class LabelStoreDataset(AbstractDataset):
    """The label cache folder: loads as a `dimo.labelling.labeller.LabelStore` handle the labelling node reads
    hits from and writes misses to (a content-addressed cache is read and extended in one step)."""

    created_on_load = True  # an empty cache is a valid start (dimo.preflight does not require it)

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self):
        from dimo.labelling.labeller import LabelStore  # lazily: labelling imports torch

        self._path.mkdir(parents=True, exist_ok=True)
        return LabelStore(self._path)

    def save(self, data) -> None:
        raise DatasetError("the label store is written through the LabelStore handle it loads as")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class _TextFileDataset(AbstractDataset[dict, dict]):
    """A small JSON / YAML file, written atomically (readers, e.g. parallel sweep workers, never see half)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _parse(self, text: str):
        raise NotImplementedError

    def _format(self, data) -> str:
        raise NotImplementedError

    def load(self):
        return self._parse(self._filepath.read_text())

    def save(self, data) -> None:
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._filepath.with_name(f".{self._filepath.name}.{os.getpid()}.tmp")
        tmp.write_text(self._format(data))
        os.replace(tmp, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class _JSONFile(_TextFileDataset):
    def _parse(self, text: str):
        return json.loads(text)

    def _format(self, data) -> str:
        return json.dumps(data, indent=2, default=str)


class _YAMLFile(_TextFileDataset):
    def _parse(self, text: str):
        return yaml.safe_load(text) or {}

    def _format(self, data) -> str:
        return yaml.safe_dump(data, sort_keys=False)


class _NoneWhenMissing:
    """Mixin (put it first): `load()` returns None when the dataset's file or folder does not exist."""

    def load(self):
        if not self.exists():
            described = self._describe()
            log.info("%s does not exist: loaded as None", described.get("filepath") or described.get("path"))
            return None
        return super().load()


class OptionalParquetDataset(_NoneWhenMissing, ParquetDataset):
    """A parquet table that may not exist yet (an unused clip source)."""


class OptionalCSVDataset(_NoneWhenMissing, CSVDataset):
    """A CSV file that may not exist (the ingest manifest, the external benchmark manifest)."""


class OptionalJSONDataset(_NoneWhenMissing, _JSONFile):
    """A JSON file that may not exist yet (a previous stage's registration)."""


class OptionalYAMLDataset(_NoneWhenMissing, _YAMLFile):
    """A YAML file that may not exist yet (the annealing sweep's best parameters)."""


class OptionalPartitionedDataset(_NoneWhenMissing, PartitionedDataset):
    """A folder of partitions that may be missing or empty (no user videos, no synthetic clips yet)."""

    KEEP = ".keep"  # saved empty, the folder still exists with this file: DVC deps on it, DVC keeps no empty folder

    def save(self, data: dict) -> None:
        super().save(data or {})
        folder = self._normalized_path.rstrip("/")
        self._filesystem.makedirs(folder, exist_ok=True)
        self._filesystem.touch(f"{folder}/{self.KEEP}")
        self._invalidate_caches()

    def _exists(self) -> bool:
        self._invalidate_caches()  # list afresh: another node or process may have written partitions since
        return super()._exists()


class LatentCacheDataset(PartitionedDataset):
    """The latent cache folder: one `SafetensorsDataset` per clip, keyed by clip id. Saving takes every clip the
    cache should hold: an entry (or a callable returning one) is written, None keeps that clip's file as it is,
    and the files of clips not named are removed. So a re-run writes only what `encode_clips` encoded."""

    def save(self, data: dict) -> None:
        for path in self._list_partitions():
            if self._path_to_partition(path) not in data:
                self._filesystem.rm(path)
        self._invalidate_caches()
        super().save({clip_id: entry for clip_id, entry in data.items() if entry is not None})


class LatentCacheKeysDataset(AbstractDataset[None, dict]):
    """Read-only: clip id -> the `cache_key` in the header of each `<clip id>.safetensors` under `path` (the
    latent cache folder), reading no tensor. A file whose header cannot be read is left out (logged with its
    path and the reason), so its clip is encoded again. No folder yet: {}."""

    created_on_load = True  # a first run starts from an empty cache (dimo.preflight does not ask for it)

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> dict[str, str | None]:
        keys = {}
        for file in sorted(self._path.glob("*.safetensors")):
            try:
                keys[file.stem] = SafetensorsDataset(str(file)).header().get("cache_key")
            except Exception as err:  # truncated or overwritten: encoded again, never trusted
                log.warning("latent cache: %s is unreadable (%s): its clip is encoded again", file, err)
        return keys

    def save(self, data) -> None:
        raise DatasetError(f"{self._path}: the cache keys are read from the entries' headers, not saved")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


# --- the annealing sweep's Optuna study (conf/base/catalog_annealing_sweep.yml: annealing_sweep_study) ---------
# The study's name is derived at run time (from the objective and the training setup), so the dataset loads the
# handle of the sqlite file that holds every study of the sweep, with the lock file beside it that workers share.
# Trials are written through Optuna while the sweep runs, never by `save`.
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

    created_on_load = True  # a new study starts from no file (dimo.preflight does not require it)

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
