"""Previews the MLflow UI shows inline: an animated GIF and a PNG contact sheet beside every mp4 artifact.

MLflow's artifact viewer plays no video, but it displays images (GIF animates). So for `x.mp4` we log
`x.preview.gif` (small, looping) and `x.sheet.png` (frames across time, one under another: for a sample grid each
row reads reference | driving | generated | target).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dimo import video_io

log = logging.getLogger(__name__)

GIF_SUFFIX = ".preview.gif"
SHEET_SUFFIX = ".sheet.png"


def _frame_indices(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def _fit(frames: np.ndarray, max_width: int) -> np.ndarray:
    """Downscale (never up) so the width is at most `max_width`, keeping the aspect."""
    _, h, w, _ = frames.shape
    if w <= max_width:
        return frames
    return video_io.resize_frames(frames, max(2, round(h * max_width / w)), max_width)


def gif_preview(frames: np.ndarray, fps: float, out: Path, max_width: int = 512, max_frames: int = 48,
                min_width: int = 480) -> Path:
    """An animated, looping GIF of (T, H, W, 3) uint8 frames, subsampled to at most `max_frames`. Toy-scale grids
    (64 px panels) are enlarged by a whole factor, pixels kept sharp, so the viewer shows more than a strip."""
    idx = _frame_indices(len(frames), max_frames)
    small = _fit(frames[idx], max_width)
    factor = max(1, round(min_width / small.shape[2]))
    small = small.repeat(factor, axis=1).repeat(factor, axis=2)
    # Keep the clip's real duration when frames were dropped.
    duration_ms = max(20, round(1000.0 * len(frames) / max(fps, 1e-3) / len(idx)))
    images = [Image.fromarray(f) for f in small]
    images[0].save(out, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=True)
    return out


def contact_sheet(frames: np.ndarray, out: Path, rows: int = 4, max_width: int = 1024) -> Path:
    """A PNG of `rows` frames evenly spaced in time, stacked top to bottom."""
    picked = _fit(frames[_frame_indices(len(frames), rows)], max_width)
    Image.fromarray(np.concatenate(list(picked), axis=0)).save(out)
    return out


def write_previews(video: Path, out_dir: Path) -> list[Path]:
    """Both previews of one video file, named after it, written into `out_dir`."""
    frames, fps = video_io.read_video(video)
    stem = video.name.removesuffix(video.suffix)
    return [gif_preview(frames, fps, out_dir / f"{stem}{GIF_SUFFIX}"),
            contact_sheet(frames, out_dir / f"{stem}{SHEET_SUFFIX}")]


def _artifact_files(client, run_id: str, path: str | None = None):
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            yield from _artifact_files(client, run_id, info.path)
        else:
            yield info.path


def log_missing_previews(run_id: str | None = None) -> list[str]:
    """For every mp4 artifact of the run (default: the active run) without a GIF beside it, log both previews
    next to it. Returns the mp4 artifact paths that got previews. Idempotent: safe to call after every node."""
    import mlflow

    run_id = run_id or mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    files = set(_artifact_files(client, run_id))
    todo = [p for p in sorted(files) if p.endswith(".mp4") and p.removesuffix(".mp4") + GIF_SUFFIX not in files]
    for path in todo:
        parent = str(Path(path).parent) if "/" in path else None
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp))
            out_dir = Path(tmp) / "previews"
            out_dir.mkdir()
            try:
                written = write_previews(local, out_dir)
            except video_io.VideoReadError as err:  # a broken artifact must not stop the run
                log.warning("no preview for %s: %s", path, err)
                continue
            for file in written:
                client.log_artifact(run_id, str(file), artifact_path=parent)
    return todo
