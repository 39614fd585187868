"""The one place that touches video codecs: read, write, resize, resample (PyAV underneath)."""

from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi")


class VideoReadError(ValueError):
    """A file that cannot be decoded as a video; the message names the file and the problem."""


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame as RGB uint8 (T, H, W, 3) and return it with the stream's frame rate."""
    return _decode(str(path), Path(path))


def read_video_bytes(encoded: bytes, name: str = "<bytes>") -> tuple[np.ndarray, float]:
    """`read_video` of a file's bytes held in memory (a Ray actor gets bytes, not a path); `name` for errors."""
    import io

    return _decode(io.BytesIO(encoded), name)


def _decode(source, path) -> tuple[np.ndarray, float]:
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except VideoReadError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as err:
        raise VideoReadError(f"{path}: cannot decode ({type(err).__name__}: {err})") from err
    if not frames:
        raise VideoReadError(f"{path}: zero decodable frames")
    if not fps or not math.isfinite(fps):
        raise VideoReadError(f"{path}: unknown frame rate")
    return np.stack(frames), fps


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18, lossless: bool = False) -> Path:
    """Encode RGB uint8 (T, H, W, 3) as H.264 mp4, written atomically (temp file + rename). `lossless`: RGB
    H.264 at crf 0 (libx264rgb), decoded back bit-exact: for videos that are scored (benchmark outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: frames must be (T, H, W, 3), got {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 needs even sizes, got {height}x{width}")
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w") as container:
            codec, pix_fmt = ("libx264rgb", "rgb24") if lossless else ("libx264", "yuv420p")
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            # Deterministic output: single thread, fixed options (same frames -> same bytes).
            stream.options = {"crf": "0" if lossless else str(crf), "preset": "medium", "threads": "1"}
            stream.codec_context.thread_count = 1
            for frame in frames:
                # Convert to YUV ourselves: PyAV's implicit conversion inside encode() is not reproducible
                # from run to run, the explicit one is (same frames -> same bytes). RGB needs none.
                if not lossless:
                    frame = av.VideoFrame.from_ndarray(frame, format="rgb24").to_ndarray(format="yuv420p")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format=pix_fmt)))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def target_size(height: int, width: int, area: int, multiple: int = 16) -> tuple[int, int]:
    """Size with (about) the given pixel area and the source aspect ratio, each side a multiple of `multiple`."""
    scale = math.sqrt(area / (height * width))
    new_h = max(multiple, int(round(height * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return new_h, new_w


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of uint8 (T, H, W, 3) frames."""
    if frames.shape[1:3] == (height, width):
        return frames
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    out = F.interpolate(video, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resample_indices(num_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Indices of source frames nearest to each tick of the target frame rate."""
    duration = num_frames / src_fps
    count = max(1, int(math.floor(duration * dst_fps + 1e-6)))
    idx = np.round(np.arange(count) * src_fps / dst_fps).astype(int)
    return np.clip(idx, 0, num_frames - 1)


def window_starts(num_frames: int, window: int, stride: int, max_windows: int | None = None) -> list[int]:
    """Start indices of full windows of `window` frames every `stride` frames."""
    starts = list(range(0, num_frames - window + 1, stride)) if num_frames >= window else []
    return starts[:max_windows] if max_windows else starts
