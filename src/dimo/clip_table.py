"""The clip table: the contract between ingest / synthesize_views and everything downstream.

One row per normalised clip. `path` is relative to the project root. `camera_params` and `gt_path` are
optional (user videos have no ground truth). Synthetic clips add ground-truth columns after these.
"""

from __future__ import annotations

import pandas as pd

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
