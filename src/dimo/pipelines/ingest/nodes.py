"""Normalise user videos: resize to a pixel area, resample to an fps, cut into 1+4k-frame windows."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import PurePosixPath

import pandas as pd
from kedro.io import DatasetError

from dimo import camera_vocabulary, clip_table, video_io
from dimo.datasets import Video

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "group_id", "view_id", "camera_motion", "caption", "split")


def check_manifest(manifest: pd.DataFrame, manifest_path: str) -> pd.DataFrame:
    """Refuse a manifest that lacks a required column, naming the file and the column."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"{manifest_path}: missing required column(s) {missing}; "
            f"a manifest needs {list(MANIFEST_COLUMNS)} (optional: supervision, camera_params)"
        )
    dup = manifest["path"][manifest["path"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{manifest_path}: column 'path' lists {dup} more than once")
    return manifest.astype({"path": str, "group_id": str, "view_id": str}).set_index("path", drop=False)


def _camera_key(label) -> str:
    try:
        return camera_vocabulary.normalise_label(label)
    except KeyError:
        return str(label)  # kept as given: validate quarantines it with the reason


def _supervision(group: pd.DataFrame) -> str:
    if len(group) < 2:
        return "single_view"
    vocab = camera_vocabulary.vocabulary()
    moving = any(vocab[k].category != "static" for k in group["camera_motion"] if k in vocab)
    return "moving_camera" if moving else "multi_view"


def _reject(path: str, expectation: str, observed) -> dict:
    return {"clip_id": None, "path": path, "stage": "ingest", "expectation": expectation,
            "column": "path", "observed": str(observed)}


def ingest_videos(
    raw_videos: dict[str, Callable[[], Video]], manifest: pd.DataFrame | None, params: dict
) -> tuple[pd.DataFrame, dict[str, Callable[[], Video]], pd.DataFrame]:
    """Turn a folder of user videos into normalised clips.

    Returns the clip table, the clips (lazy, so only one video is in memory at a time) and the rejected
    inputs with their reasons. Raw files are only read.
    """
    window, stride = int(params["window_frames"]), int(params["window_stride"])
    if (window - 1) % 4:
        raise ValueError(f"ingest.window_frames must be 1+4k (Wan's VAE), got {window}")
    if manifest is not None:
        manifest = check_manifest(manifest, params["manifest_path"])

    rejects, sources = [], []
    exts = tuple(params.get("extensions", video_io.VIDEO_EXTENSIONS))
    for name in sorted(raw_videos):
        if not name.lower().endswith(exts):
            log.info("ingest: skipping %s (not a video extension)", name)
            continue
        src = f"{params['raw_dir']}/{name}"
        row = manifest.loc[name] if manifest is not None and name in manifest.index else None
        if manifest is not None and row is None:
            log.warning("ingest: %s is not in the manifest; using defaults", name)
        try:
            video = raw_videos[name]()
        except (video_io.VideoReadError, DatasetError) as err:
            # Kedro wraps the dataset's error; a VideoReadError underneath is a bad file, not a bug.
            cause = err if isinstance(err, video_io.VideoReadError) else err.__cause__
            if not isinstance(cause, video_io.VideoReadError):
                raise
            rejects.append(_reject(src, "decodable", cause))
            continue
        idx = video_io.resample_indices(len(video.frames), video.fps, params["fps"])
        starts = video_io.window_starts(len(idx), window, stride, params.get("max_windows_per_video"))
        if not starts:
            rejects.append(_reject(src, f"at_least_one_window_of_{window}_frames", f"{len(idx)} frames"))
            continue
        stem = PurePosixPath(name).with_suffix("").as_posix().replace("/", "__")
        camera = _camera_key(row["camera_motion"] if row is not None else params["default_camera_motion"])
        sources.append({
            "name": name, "stem": stem, "src": src, "fps_in": video.fps, "idx": idx, "starts": starts,
            "shape": video.frames.shape[1:3],
            "group": str(row["group_id"]) if row is not None else stem,
            "view_id": str(row["view_id"]) if row is not None else "0",
            "camera_motion": camera,
            "caption": row["caption"] if row is not None and isinstance(row["caption"], str) else None,
            "split": str(row["split"]) if row is not None else params["default_split"],
            "supervision": row.get("supervision") if row is not None else None,
            "camera_params": row.get("camera_params") if row is not None else None,
        })
        del video

    groups = pd.DataFrame(sources, columns=["group", "camera_motion"]).groupby("group")
    group_supervision = {g: _supervision(df) for g, df in groups} if sources else {}

    rows, clips = [], {}
    for s in sources:
        height, width = video_io.target_size(*s["shape"], params["target_area"], params["size_multiple"])
        caption = s["caption"]
        if not caption and s["camera_motion"] in camera_vocabulary.vocabulary():
            caption = camera_vocabulary.prompt(s["camera_motion"], subject=params["default_subject"],
                                               action="moves")
        for k, start in enumerate(s["starts"]):
            clip_id = f"{s['stem']}-w{k:03d}"
            rows.append({
                "clip_id": clip_id, "path": f"{params['clips_dir']}/{clip_id}.mp4", "source": "user",
                "source_path": s["src"], "group_id": f"{s['group']}-w{k:03d}", "view_id": s["view_id"],
                "supervision": s["supervision"] if isinstance(s["supervision"], str) else group_supervision[s["group"]],
                "camera_motion": s["camera_motion"],
                "camera_params": s["camera_params"] if isinstance(s["camera_params"], str) else json.dumps({}),
                "caption": caption, "split": s["split"], "fps": float(params["fps"]), "num_frames": window,
                "height": height, "width": width, "start_frame": start, "source_frames": len(s["idx"]),
            })
            clips[clip_id] = _lazy_clip(raw_videos[s["name"]], s["idx"][start:start + window], height, width,
                                        float(params["fps"]))
    log.info("ingest: %d clips from %d videos, %d rejected", len(rows), len(sources), len(rejects))
    table = clip_table.conform(pd.DataFrame(rows)) if rows else clip_table.empty()
    rejected = clip_table.conform(pd.DataFrame(rejects), clip_table.REJECT_COLUMNS) if rejects else \
        clip_table.empty(clip_table.REJECT_COLUMNS)
    return table, clips, rejected


def _lazy_clip(load: Callable[[], Video], indices, height: int, width: int, fps: float) -> Callable[[], Video]:
    def make() -> Video:
        frames = load().frames[indices]
        return Video(video_io.resize_frames(frames, height, width), fps)

    return make
