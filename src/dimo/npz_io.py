"""Byte-reproducible .npz files (ground truth, labels): a dict of numpy arrays (`dimo.datasets.NpzDataset` is
their Kedro dataset).

kedro-datasets 9.6 has no numpy/npz dataset, and numpy.savez stamps each member with the current time, so the
same arrays give different bytes; this writer fixes the zip timestamps (and writes atomically).
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npz(path: str | Path, arrays: dict[str, Any], compress: bool = True) -> Path:
    """np.load-compatible .npz with fixed member timestamps (same arrays -> same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=method) as zf:
            for key in sorted(arrays):
                arr = np.asanyarray(arrays[key])
                if arr.dtype == object:
                    raise TypeError(f"{path}: {key} is an object array (not loadable without pickle)")
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
                info.compress_type = method
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
