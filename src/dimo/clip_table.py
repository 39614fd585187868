"""The clip table: the contract between ingest / synthesize_views and everything downstream.

One row per normalised clip. `path` is relative to the project root. `camera_params` and `gt_path` are
optional (user videos have no ground truth). Synthetic clips add ground-truth columns after these.

Nodes read clip files through the catalog, never by `path`: the clip folders (`synthetic_clips`,
`ingested_clips`, and `synthetic_ground_truth`) are partitioned datasets keyed by clip id; `clip_loaders` merges
them and `load_clip` looks a row's clip up by its `clip_id`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from kedro.io import DatasetError

from dimo import video_io

SUPERVISION_KINDS = ("single_view", "multi_view", "moving_camera")
SPLITS = ("train", "val", "test")

COLUMNS: dict[str, str] = {
    "clip_id": "string",
    "path": "string",
    "source": "string",  # user | synthetic
    "source_path": "string",  # the raw file the clip was cut from (never modified)
    "group_id": "string",  # clips of one motion seen by several cameras share it
    "view_id": "string",
    "supervision": "string",  # one of SUPERVISION_KINDS
    "camera_motion": "string",  # a key of camera_vocabulary.yml
    "camera_params": "string",  # JSON
    "caption": "string",
    "split": "string",
    "fps": "float64",
    "num_frames": "int64",  # 1 + 4k
    "height": "int64",
    "width": "int64",
    "start_frame": "int64",  # first frame of the window, in resampled frames
    "source_frames": "int64",  # resampled length of the source video
    "gt_path": "string",  # ground-truth arrays (synthetic only)
}

REJECT_COLUMNS = {"clip_id": "string", "path": "string", "stage": "string", "expectation": "string",
                  "column": "string", "observed": "string"}


def empty(columns: dict[str, str] = COLUMNS) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def conform(table: pd.DataFrame, columns: dict[str, str] = COLUMNS) -> pd.DataFrame:
    """Columns in contract order with contract dtypes; extra columns (ground truth, stats) kept after them."""
    table = table.copy()
    for name, dtype in columns.items():
        if name not in table:
            table[name] = pd.Series([pd.NA] * len(table), dtype=dtype, index=table.index)
        else:
            table[name] = table[name].astype(dtype)
    extra = [c for c in table.columns if c not in columns]
    return table[list(columns) + extra].reset_index(drop=True)


class MissingClipError(LookupError):
    """A clip-table row whose clip id has no file in the clip folders."""


def clip_loaders(*folders: Mapping[str, Callable[[], Any]] | None) -> dict[str, Callable[[], Any]]:
    """clip_id -> loader over the partitions of several folders, e.g. `clip_loaders(synthetic, ingested)`
    (= `{**synthetic, **ingested}`); a folder that does not exist yet loads as None and adds nothing."""
    merged: dict[str, Callable[[], Any]] = {}
    for folder in folders:
        merged.update(folder or {})
    return merged


def check_clips(clip_ids, loaders: Mapping[str, Callable[[], Any]], folder: str = "the clip folders") -> None:
    """Fail before any work when rows name clips that no folder holds (all of them named)."""
    missing = [c for c in clip_ids if c not in loaders]
    if missing:
        raise MissingClipError(f"{len(missing)} clip(s) of the clip table have no file in {folder}: "
                               f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")


def load_clip(loaders: Mapping[str, Callable[[], Any]], clip_id: str, folder: str = "the clip folders"):
    """The clip `clip_id` loaded through its partition. Raises `MissingClipError` naming the clip when no folder
    holds it, and the `video_io.VideoReadError` / `FileNotFoundError` under Kedro's `DatasetError` when its
    file cannot be read (a bad file, not a bug)."""
    if clip_id not in loaders:
        raise MissingClipError(f"clip {clip_id!r} has no file in {folder} (the clip table lists it, the folder "
                               "does not hold it: re-run the stage that writes it)")
    try:
        return loaders[clip_id]()
    except DatasetError as err:
        if isinstance(err.__cause__, (video_io.VideoReadError, FileNotFoundError)):
            raise err.__cause__ from None
        raise
