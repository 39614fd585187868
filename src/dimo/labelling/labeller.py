"""Label clips: decode -> detect -> fit (batched over clips, in a worker thread while the next clips are being
detected) -> one label .npz per clip in a content-addressed store (hash of the clip file's bytes, or of frames
made in memory, + labelling params), so a re-run skips every clip whose bytes and parameters did not change.
Clips come as loaders (`dimo.datasets.Video` with the file's bytes) or frames: this module opens no path; the
store's folder is the catalog's `dimo.datasets.LabelStoreDataset`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dimo import video_io
from dimo.labelling import detect as det
from dimo.labelling import fit as fitting
from dimo.labelling import label_format as lf
from dimo.labelling import multiview

log = logging.getLogger(__name__)

# Parameters that change label content (others, e.g. the progress bar or batch size, do not).
HASHED_PARAMS = ("body_model", "anny_phenotype", "smplx", "detect", "fit", "gates_per_frame")


def content_hash(params: dict, encoded: bytes | None = None, frames: np.ndarray | None = None,
                 extra: bytes = b"") -> str:
    """Key of a clip's label: its file's bytes (`encoded`) or, for frames made in memory, their pixels; and the
    label params; `extra`: what else the label depends on (a fused group's members and cameras)."""
    h = hashlib.sha256()
    h.update(extra)
    if encoded is not None:
        h.update(encoded)
    else:
        h.update(repr(frames.shape).encode())
        h.update(np.ascontiguousarray(frames).tobytes())
    relevant = {k: params.get(k) for k in HASHED_PARAMS}
    h.update(json.dumps({"label_version": lf.LABEL_VERSION, **relevant}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


class LabelStore:
    """A folder of `<hash>.npz` labels."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> dict[str, np.ndarray]:
        return lf.load_label(self.path(key))

    def save(self, key: str, label: dict) -> Path:
        return lf.save_label(self.path(key), label)


def _jitter(d: det.Detections) -> np.ndarray:
    """Per-frame 2D acceleration of the confident pose landmarks, relative to the person's size."""
    T = len(d.person)
    out = np.zeros(T, np.float32)
    if T < 3:
        return out
    xy, v = d.pose2d[..., :2], d.pose2d[..., 2]
    size = np.maximum(np.ptp(xy[..., 1], axis=1), np.ptp(xy[..., 0], axis=1))
    for t in range(1, T - 1):
        if not (d.person[t - 1] and d.person[t] and d.person[t + 1]):
            continue
        m = (v[t - 1] > 0.5) & (v[t] > 0.5) & (v[t + 1] > 0.5)
        if m.sum() < 3 or size[t] < 1:
            continue
        acc = xy[t + 1, m] - 2 * xy[t, m] + xy[t - 1, m]
        out[t] = float(np.linalg.norm(acc, axis=-1).mean() / size[t])
    return out


def frame_masks(d: det.Detections, gates: dict) -> dict[str, np.ndarray]:
    """Per-frame validity: a person, not blank, confident torso, no second person seen on that frame; hands:
    detected and every landmark inside the image (a hand leaving the frame is not labelled)."""
    conf = d.confidence
    torso = d.pose2d[:, [0, 11, 12], 2].mean(1) * d.person
    valid = d.person & ~d.blank & (torso >= gates["min_frame_confidence"]) & (d.person_count != 2)
    m = gates["hand_margin_px"]
    inside = ((d.hand2d[..., 0] >= -m) & (d.hand2d[..., 0] <= d.width - 1 + m) & (d.hand2d[..., 1] >= -m)
              & (d.hand2d[..., 1] <= d.height - 1 + m)).all(-1)
    # The pose's own wrist outside the image also means the hand is not (fully) visible.
    wx, wy = d.pose2d[:, list(det.POSE_WRIST), 0], d.pose2d[:, list(det.POSE_WRIST), 1]
    wrist_in = (wx >= 0) & (wx <= d.width - 1) & (wy >= 0) & (wy <= d.height - 1)
    hand_valid = d.hand_ok & inside & (wrist_in | ~d.person[:, None]) & valid[:, None]
    return {"valid": valid, "hand_valid": hand_valid, "confidence": conf, "torso": torso, "jitter": _jitter(d)}


def build_label(clip: dict, d: det.Detections, masks: dict, body: dict | None, hands: dict | None, backend,
                seg_index: int) -> dict:
    T = len(d.person)
    arrays: dict[str, Any] = {
        "keypoints2d_body": d.pose2d, "keypoints3d_body": d.pose3d, "keypoints2d_hand": d.hand2d,
        "keypoints3d_hand": d.hand3d, "valid": masks["valid"], "hand_valid": masks["hand_valid"],
        "person_detected": d.person, "frame_confidence": masks["confidence"], "person_count": d.person_count,
        "blank": d.blank, "jitter": masks["jitter"],
    }
    if body is not None:
        arrays.update(theta_body=lf.rot6d_from_matrix(body["body_R"]), root_orient=lf.rot6d_from_matrix(body["root_R"]),
                      camera_wp=body["camera_wp"], fit_keypoints3d=body["fit_points"][:, :len(lf.FIT_KEYPOINTS)],
                      fit_error_3d_mm=np.where(masks["valid"], body["err3d_mm"], 0.0),
                      fit_error_2d_px=np.where(masks["valid"], body["err2d_px"], 0.0),
                      scale=np.float32(body["scale"][seg_index]))
    if hands is not None:
        rest = np.stack([backend.hand_rest_G(s).numpy() for s in ("L", "R")])
        arrays.update(theta_hand=lf.rot6d_from_matrix(hands["finger_R"]),
                      hand_orient=lf.rot6d_from_matrix(hands["G"] @ np.swapaxes(rest, -1, -2)[None]),
                      hand_fit_error_mm=np.where(masks["hand_valid"], hands["err_mm"], 0.0),
                      hand_scale=hands["scale"][seg_index])
    label = lf.make_label(T, backend.name, clip_id=clip["clip_id"], fps=clip["fps"], height=d.height, width=d.width,
                          **{k: v for k, v in arrays.items() if k != "jitter"})
    label["jitter"] = np.asarray(masks["jitter"], np.float32)
    lf.check_label(label)
    return label


def _focal(clip: dict, d: det.Detections, cfg: fitting.FitConfig) -> np.ndarray:
    """(T,) focal in px of a clip: its known intrinsics, else the clip table's focal_px, else the default FOV."""
    T = len(d.person)
    K = clip.get("intrinsics")
    if K is not None and len(K) >= T:
        return np.asarray(K, np.float64)[:T, 0, 0]
    f = clip.get("focal_px")
    if f is not None and np.isfinite(float(f)) and float(f) > 0:
        return np.full(T, float(f))
    return np.full(T, 0.5 * d.height / np.tan(np.radians(cfg.default_vfov_deg) / 2))


def fit_batch(items: list[tuple[dict, det.Detections, dict]], backend, cfg: fitting.FitConfig) -> list[dict]:
    """Fit the bodies and hands of several clips in one optimisation (segments keep them independent)."""
    t0 = time.perf_counter()
    seg = np.concatenate([np.full(len(d.person), i) for i, (_, d, _) in enumerate(items)])
    cat = lambda f: np.concatenate([f(d, m) for _, d, m in items])  # noqa: E731
    valid = cat(lambda d, m: m["valid"])
    hand_valid = cat(lambda d, m: m["hand_valid"])
    hand3d = cat(lambda d, m: d.hand3d)
    persp = {}
    if cfg.perspective:  # per clip: the known focal, the clip table's, or the default field of view
        persp = {"focal": np.concatenate([_focal(c, d, cfg) for c, d, _ in items]),
                 "centre": cat(lambda d, m: np.tile([(d.width - 1) / 2, (d.height - 1) / 2], (len(d.person), 1)))}
    body = fitting.fit_body(backend, cat(lambda d, m: d.pose3d), cat(lambda d, m: d.pose2d), valid, seg,
                            hand3d=hand3d, hand_ok=hand_valid,
                            image_size=(max(d.height for _, d, _ in items), max(d.width for _, d, _ in items)),
                            cfg=cfg, **persp) if valid.any() else None
    hands = fitting.fit_hands(backend, hand3d, hand_valid, seg, cfg=cfg) if hand_valid.any() else None
    bodies, hand_fits, start = [], [], 0
    for _, d, _ in items:
        sl = slice(start, start + len(d.person))
        bodies.append({k: (v[sl].copy() if isinstance(v, np.ndarray) and v.shape[:1] == (len(seg),) else v)
                       for k, v in body.items()} if body is not None else None)
        hand_fits.append({k: (v[sl] if isinstance(v, np.ndarray) and v.shape[:1] == (len(seg),) else v)
                          for k, v in hands.items()} if hands is not None else None)
        start += len(d.person)
    # Synchronised views with known cameras: one body fitted to all views replaces the single-view fits.
    multiview.fuse_groups(items, bodies, backend, cfg)
    labels = [build_label(clip, d, m, bodies[i], hand_fits[i], backend, i) for i, (clip, d, m) in enumerate(items)]
    dt = (time.perf_counter() - t0) / max(len(items), 1)
    for lab in labels:
        lab["fit_seconds"] = np.float64(dt)
    return labels


def _fusion_key(clip: dict) -> bytes:
    """A label also depends on the clip's known focal and, when fused, on its group's members and cameras."""
    own = b""
    if clip.get("intrinsics") is not None:
        own += b"K" + np.ascontiguousarray(clip["intrinsics"]).tobytes()
    if clip.get("focal_px") is not None:
        own += f"f{float(clip['focal_px']):.4f}".encode()
    if clip.get("cameras") is None or not clip.get("group_id"):
        return own
    K, E = clip["cameras"]
    members = ",".join(map(str, clip.get("group_members") or ()))
    head = own + f"{clip['group_id']}|{members}|".encode()
    return head + np.ascontiguousarray(K).tobytes() + np.ascontiguousarray(E).tobytes()


def _frames_and_key(clip: dict, params: dict) -> tuple[np.ndarray, str]:
    """A clip's frames and label key: `frames` in memory (keyed by pixels) or `load()` -> Video (keyed by the
    file's bytes). A clip that cannot be read is labelled as empty (every frame invalid)."""
    frames, _, key = clip_source(clip, params)
    return frames, key


def empty_frames(clip: dict) -> np.ndarray:
    """What a clip that cannot be read (or, on the Ray runner, cannot be labelled) is labelled from."""
    return np.zeros((int(clip.get("num_frames") or 1), 16, 16, 3), np.uint8)


def clip_source(clip: dict, params: dict) -> tuple[np.ndarray, bytes | None, str]:
    """`_frames_and_key` plus the file's bytes when the clip came from one (None otherwise)."""
    extra = _fusion_key(clip)
    if clip.get("frames") is not None:
        return clip["frames"], None, content_hash(params, frames=clip["frames"], extra=extra)
    try:
        video = clip["load"]()
    except (video_io.VideoReadError, FileNotFoundError) as err:
        log.warning("pseudo_label: %s cannot be read (%s): labelled as empty", clip["clip_id"], err)
        frames = empty_frames(clip)
        return frames, None, content_hash(params, frames=frames, extra=extra)
    if video.encoded is None:
        return video.frames, None, content_hash(params, frames=video.frames, extra=extra)
    return video.frames, video.encoded, content_hash(params, encoded=video.encoded, extra=extra)


class _DetectAndFit:
    """Detects clips here and fits them in a worker thread, `fit_batch_clips` at a time, overlapping the
    detection of the next clips; saves each label under its key and records its row."""

    def __init__(self, params: dict, backend, store: LabelStore, keys: list, rows: dict):
        from dimo.labelling.body_models import make_backend

        self.backend = backend or make_backend(params)
        self.detector = det.Detector(det.DetectConfig.from_params(params.get("detect")))
        self.cfg = fitting.FitConfig.from_params(params.get("fit"))
        self.batch_n = max(1, int(params.get("fit_batch_clips", 4)))
        self.gates = params["gates_per_frame"]
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[tuple[list[int], Future]] = []
        self.batch: list[tuple[int, tuple]] = []
        self.detect_s: dict[int, float] = {}
        self.store, self.keys, self.rows = store, keys, rows

    def add(self, i: int, clip: dict, frames: np.ndarray, t0: float) -> None:
        d = self.detector.detect(frames)
        self.detect_s[i] = time.perf_counter() - t0
        meta = {k: v for k, v in clip.items() if k not in ("frames", "load")}
        # A full batch is sent off before a clip of another group, so synchronised views are fitted together.
        if len(self.batch) >= self.batch_n and self.batch[-1][1][0].get("group_id") != meta.get("group_id"):
            self.flush()
        self.batch.append((i, ({**meta, "fps": float(clip.get("fps") or 0.0)}, d, frame_masks(d, self.gates))))
        if len(self.batch) >= self.batch_n and not meta.get("group_id"):
            self.flush()
        self.collect(block=False)

    def flush(self) -> None:
        if self.batch:
            idx = [i for i, _ in self.batch]
            items = [item for _, item in self.batch]
            self.pending.append((idx, self.pool.submit(fit_batch, items, self.backend, self.cfg)))
            self.batch.clear()

    def collect(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][1].done()):
            idx, fut = self.pending.pop(0)
            for i, label in zip(idx, fut.result()):
                self.store.save(self.keys[i], label)
                self.rows[i] = {"cache_hit": False, "detect_seconds": self.detect_s[i],
                                "fit_seconds": float(label["fit_seconds"])}

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.detector.close()


def label_clips(clips: list[dict], store: LabelStore, params: dict, backend=None, progress: bool = True) -> list[dict]:
    """Label every clip: dicts with clip_id, path (reported, never opened), fps, num_frames and either `load`
    (a callable returning a `dimo.datasets.Video`, e.g. a clip partition) or `frames`, uint8 (T, H, W, 3) in
    memory (e.g. generated videos). One clip is decoded at a time. Returns one summary row per clip, in input
    order. Cache hits are loaded from the store; misses are detected here and fitted in a worker thread in
    batches of `fit_batch_clips` (the detector and body model load at the first miss)."""
    keys: list[str] = [""] * len(clips)
    rows: dict[int, dict] = {}
    labelled_now: set[str] = set()  # keys missing at the start stay misses (a duplicate clip is labelled again)
    worker = None
    try:
        for i, c in enumerate(tqdm(clips, desc="pseudo_label", disable=not progress)):
            t0 = time.perf_counter()
            frames, keys[i] = _frames_and_key(c, params)
            if keys[i] not in labelled_now and store.has(keys[i]):
                rows[i] = {"cache_hit": True, "detect_seconds": 0.0, "fit_seconds": 0.0}
                continue
            labelled_now.add(keys[i])
            worker = worker or _DetectAndFit(params, backend, store, keys, rows)
            worker.add(i, c, frames, t0)
            del frames
        if worker:
            worker.flush()
            worker.collect(block=True)
    finally:
        if worker:
            worker.close()
    return index_rows(clips, keys, rows, store, params)


def index_rows(clips: list[dict], keys: list[str], rows: dict, store: LabelStore, params: dict) -> list[dict]:
    """One summary row per clip, in input order, from the stored labels (both runners end here)."""
    gates = params["gates_per_frame"]
    out = []
    for i, c in enumerate(clips):
        label = store.load(keys[i])
        out.append({**summarise(label, gates), "clip_id": c["clip_id"], "path": c["path"], "content_hash": keys[i],
                    "label_path": str(store.path(keys[i])), **rows[i]})
    return out


def summarise(label: dict, gates: dict) -> dict:
    """Per-clip statistics the gates and the report read."""
    v, hv = label["valid"], label["hand_valid"]
    T = len(v)
    checked = label["person_count"] >= 0
    multi = float((label["person_count"][checked] == 2).mean()) if checked.any() else 0.0
    jit = label.get("jitter", np.zeros(T))
    return {
        "num_frames": T, "person_ratio": float(label["person_detected"].mean()), "coverage": float(v.mean()),
        "blank_ratio": float(label["blank"].mean()), "multi_person_ratio": multi,
        "hand_coverage_left": float(hv[:, 0].mean()), "hand_coverage_right": float(hv[:, 1].mean()),
        "mean_confidence": float(label["frame_confidence"][v].mean()) if v.any() else 0.0,
        "jitter": float(np.median(jit[v])) if v.any() else 0.0,
        "fit_error_3d_mm": float(np.median(label["fit_error_3d_mm"][v])) if v.any() else 0.0,
        "fit_error_2d_px": float(np.median(label["fit_error_2d_px"][v])) if v.any() else 0.0,
        "body_model": str(label["body_model"]),
    }


def frame_table_rows(clip_id: str, label: dict) -> dict[str, np.ndarray]:
    """Per-frame rows for the label table the great-expectations suite checks."""
    T = len(label["valid"])
    body_aa = lf.axis_angle_from_rot6d(label["theta_body"])
    hand_aa = lf.axis_angle_from_rot6d(label["theta_hand"])
    finite = np.ones(T, bool)
    for k in ("theta_body", "root_orient", "theta_hand", "keypoints3d_body", "fit_keypoints3d"):
        finite &= np.isfinite(label[k].reshape(T, -1)).all(1)
    return {
        "clip_id": np.array([clip_id] * T), "frame": np.arange(T),
        "valid": label["valid"], "person_detected": label["person_detected"], "blank": label["blank"],
        "confidence": label["frame_confidence"].astype(np.float64),
        "hand_valid_left": label["hand_valid"][:, 0], "hand_valid_right": label["hand_valid"][:, 1],
        "person_count": label["person_count"].astype(np.int64),
        "theta_finite": finite,
        "body_angle_max_deg": np.degrees(np.nan_to_num(np.linalg.norm(body_aa, axis=-1), nan=np.inf).max(1)),
        "hand_angle_max_deg": np.degrees(np.nan_to_num(np.linalg.norm(hand_aa, axis=-1), nan=np.inf).max((1, 2))),
        "fit_error_3d_mm": label["fit_error_3d_mm"].astype(np.float64),
        "jitter": label.get("jitter", np.zeros(T, np.float32)).astype(np.float64),
    }


def fitted_hand_points(backend, label: dict) -> tuple[np.ndarray, np.ndarray]:
    """Fitted hand keypoints (T, 2, 21, 3) (wrist-relative, camera axes) from a label, through the backend."""
    T = len(label["valid"])
    out = np.zeros((T, 2, 21, 3), np.float32)
    for s, code in enumerate(("L", "R")):
        G = (lf.matrix_from_rot6d(torch.as_tensor(label["hand_orient"][:, s], dtype=torch.float32))
             @ backend.hand_rest_G(code))
        F = lf.matrix_from_rot6d(torch.as_tensor(label["theta_hand"][:, s], dtype=torch.float32))
        with torch.no_grad():
            out[:, s] = (backend.hand_points(code, G, F) * float(label["hand_scale"][s])).numpy()
    return out, label["hand_valid"]


__all__ = ["content_hash", "LabelStore", "label_clips", "frame_table_rows"]
