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


def _describe_source(name: str, video: Video, row, params: dict) -> dict:
    """What the clips of one decoded video need: resampled indices, window starts (none when the video is
    shorter than one window) and the manifest's facts (defaults for a video it does not describe)."""
    idx = video_io.resample_indices(len(video.frames), video.fps, params["fps"])
    starts = video_io.window_starts(len(idx), int(params["window_frames"]), int(params["window_stride"]),
                                    params.get("max_windows_per_video"))
    stem = PurePosixPath(name).with_suffix("").as_posix().replace("/", "__")
    camera = _camera_key(row["camera_motion"] if row is not None else params["default_camera_motion"])
    return {
        "name": name, "stem": stem, "src": f"{params['raw_dir']}/{name}", "fps_in": video.fps, "idx": idx,
        "starts": starts, "shape": video.frames.shape[1:3],
        "group": str(row["group_id"]) if row is not None else stem,
        "view_id": str(row["view_id"]) if row is not None else "0",
        "camera_motion": camera,
        "caption": row["caption"] if row is not None and isinstance(row["caption"], str) else None,
        "split": str(row["split"]) if row is not None else params["default_split"],
        "supervision": row.get("supervision") if row is not None else None,
        "camera_params": row.get("camera_params") if row is not None else None,
    }


def _read_sources(raw_videos: dict[str, Callable[[], Video]], manifest: pd.DataFrame | None,
                  params: dict) -> tuple[list[dict], list[dict]]:
    """Decode each raw video once (one in memory at a time): the usable sources and the rejected inputs."""
    window = int(params["window_frames"])
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
        source = _describe_source(name, video, row, params)
        del video
        if not source["starts"]:
            rejects.append(_reject(src, f"at_least_one_window_of_{window}_frames", f"{len(source['idx'])} frames"))
            continue
        sources.append(source)
    return sources, rejects


def _clips_of(source: dict, load: Callable[[], Video], supervision: str, params: dict) -> tuple[list, dict]:
    """The clip-table rows and lazy clips of one source's windows."""
    window, fps = int(params["window_frames"]), float(params["fps"])
    height, width = video_io.target_size(*source["shape"], params["target_area"], params["size_multiple"])
    caption = source["caption"]
    if not caption and source["camera_motion"] in camera_vocabulary.vocabulary():
        caption = camera_vocabulary.prompt(source["camera_motion"], subject=params["default_subject"],
                                           action="moves")
    rows, clips = [], {}
    for k, start in enumerate(source["starts"]):
        clip_id = f"{source['stem']}-w{k:03d}"
        rows.append({
            "clip_id": clip_id, "path": f"{params['clips_dir']}/{clip_id}.mp4", "source": "user",
            "source_path": source["src"], "group_id": f"{source['group']}-w{k:03d}", "view_id": source["view_id"],
            "supervision": source["supervision"] if isinstance(source["supervision"], str) else supervision,
            "camera_motion": source["camera_motion"],
            "camera_params": source["camera_params"] if isinstance(source["camera_params"], str) else json.dumps({}),
            "caption": caption, "split": source["split"], "fps": fps, "num_frames": window,
            "height": height, "width": width, "start_frame": start, "source_frames": len(source["idx"]),
        })
        clips[clip_id] = _lazy_clip(load, source["idx"][start:start + window], height, width, fps)
    return rows, clips


def ingest_videos(
    raw_videos: dict[str, Callable[[], Video]] | None, manifest: pd.DataFrame | None, params: dict
) -> tuple[pd.DataFrame, dict[str, Callable[[], Video]], pd.DataFrame]:
    """Turn a folder of user videos into normalised clips.

    Returns the clip table, the clips (lazy, so only one video is in memory at a time) and the rejected
    inputs with their reasons. Raw files are only read. No videos folder (None) means no user clips.
    """
    window = int(params["window_frames"])
    if (window - 1) % 4:
        raise ValueError(f"ingest.window_frames must be 1+4k (Wan's VAE), got {window}")
    if manifest is not None:
        manifest = check_manifest(manifest, params["manifest_path"])
    if raw_videos is None:
        raw_videos = {}
    sources, rejects = _read_sources(raw_videos, manifest, params)

    groups = pd.DataFrame(sources, columns=["group", "camera_motion"]).groupby("group")
    group_supervision = {g: _supervision(df) for g, df in groups} if sources else {}
    rows, clips = [], {}
    for s in sources:
        source_rows, source_clips = _clips_of(s, raw_videos[s["name"]], group_supervision[s["group"]], params)
        rows += source_rows
        clips.update(source_clips)
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
