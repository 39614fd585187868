"""`pseudo_label.runner: ray`: the label cache filled by a Ray Data actor pool (docs/ray.md).

The driver reads each clip once (its content-hash key, as the local runner), skips the keys the store holds,
and cuts the misses into the same fit batches as the local runner (`fit_batch_clips`, synchronised views
together): a batch's LBFGS fit couples its clips, so equal batches are what makes both runners write the same
labels. The clips' bytes go to the object store; each actor loads mediapipe and the body model once and
detects + fits whole batches. Labels come back to the driver, which saves each batch as it arrives, so a driver
that dies loses only the batches in flight, and a re-run labels only what the store lacks.

A killed actor is restarted and its batch retried (`ray.max_task_retries`). A batch that raises is retried clip
by clip; a clip that still fails is labelled from empty frames, exactly as the local runner labels a clip that
cannot be read, so the gates quarantine it with the same reasons, and the job goes on.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable

import numpy as np

from dimo import distributed, video_io
from dimo.labelling import labeller

log = logging.getLogger(__name__)


def fit_batches(misses: list[int], clips: list[dict], batch_n: int) -> list[list[int]]:
    """The local runner's batching (`labeller._DetectAndFit.add`) of the missed clips, as index lists."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i in misses:
        group = clips[i].get("group_id")
        if len(cur) >= batch_n and clips[cur[-1]].get("group_id") != group:
            out.append(cur)
            cur = []
        cur.append(i)
        if len(cur) >= batch_n and not group:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def _to_npz(label: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **label)
    return buf.getvalue()


def _from_npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class LabelActor:
    """One pool member: mediapipe and the body model, loaded once; labels whole fit batches."""

    def __init__(self, params: dict, work: list):
        from dimo.labelling import detect as det
        from dimo.labelling import fit as fitting
        from dimo.labelling.body_models import make_backend

        self.backend = make_backend(params)
        self.detector = det.Detector(det.DetectConfig.from_params(params.get("detect")))
        self.cfg = fitting.FitConfig.from_params(params.get("fit"))
        self.gates = params["gates_per_frame"]
        self.work = work  # one object ref per fit batch: [(index, clip meta, frames or None, bytes or None)]

    def _items(self, clips: list[tuple]) -> tuple[list, list[float]]:
        items, seconds = [], []
        for _, meta, frames, encoded in clips:
            t0 = time.perf_counter()
            if frames is None:
                frames = video_io.read_video_bytes(encoded, meta["path"])[0]
            d = self.detector.detect(frames)
            seconds.append(time.perf_counter() - t0)
            items.append(({**meta, "fps": float(meta.get("fps") or 0.0)}, d, labeller.frame_masks(d, self.gates)))
        return items, seconds

    def _label(self, clips: list[tuple]) -> tuple[list[dict], list[float]]:
        items, seconds = self._items(clips)
        return labeller.fit_batch(items, self.backend, self.cfg), seconds

    def __call__(self, batch: dict) -> dict:
        import ray

        out: dict[str, list] = {"item": [], "npz": [], "detect_seconds": [], "error": [], "pid": []}
        for b in batch["batch_id"]:
            clips = ray.get(self.work[int(b)])
            try:
                results = [(c[0], *r, "") for c, *r in zip(clips, *self._label(clips), strict=True)]
            except Exception as err:  # noqa: BLE001 - one bad batch must not end the job: clip by clip
                log.warning("ray labeller: batch %d failed (%s): retried clip by clip", b, err)
                results = [self._alone(c) for c in clips]
            for item, label, seconds, error in results:
                out["item"].append(item)
                out["npz"].append(_to_npz(label))
                out["detect_seconds"].append(seconds)
                out["error"].append(error)
                out["pid"].append(os.getpid())
        return {k: np.asarray(v, dtype=object if k == "npz" else None) for k, v in out.items()}

    def _alone(self, clip: tuple) -> tuple:
        """A clip of a failed batch, on its own; failing again, labelled from empty frames (as unreadable)."""
        try:
            (label,), (seconds,) = self._label([clip])
            return clip[0], label, seconds, ""
        except Exception as err:  # noqa: BLE001
            empty = (clip[0], clip[1], labeller.empty_frames(clip[1]), None)
            (label,), (seconds,) = self._label([empty])
            return clip[0], label, seconds, f"{type(err).__name__}: {err}"


def _plan(clips: list[dict], store: labeller.LabelStore, params: dict):
    """Keys of every clip, the work of each miss (meta, frames only when no file bytes), the cached rows."""
    keys, work, rows, missed = [""] * len(clips), {}, {}, set()
    for i, c in enumerate(clips):
        frames, encoded, keys[i] = labeller.clip_source(c, params)
        if keys[i] not in missed and store.has(keys[i]):  # a key missing at the start stays a miss
            rows[i] = {"cache_hit": True, "detect_seconds": 0.0, "fit_seconds": 0.0}
            continue
        missed.add(keys[i])
        meta = {k: v for k, v in c.items() if k not in ("frames", "load")}
        work[i] = (i, meta, None if encoded is not None else frames, encoded)
    return keys, work, rows


def label_clips(clips: list[dict], store: labeller.LabelStore, params: dict,
                on_batch: Callable[[dict], None] | None = None) -> list[dict]:
    """`labeller.label_clips` on a Ray actor pool (`params["ray"]`, `distributed.RaySettings`): same rows,
    same labels. `on_batch(progress)` after each saved batch: done / total clips, and the actor's pid."""
    import ray

    settings = distributed.RaySettings.from_params(params.get("ray"))
    keys, work, rows = _plan(clips, store, params)
    batches = fit_batches(sorted(work), clips, max(1, int(params.get("fit_batch_clips", 4))))
    log.info("pseudo_label (ray): %d clips, %d cached, %d to label in %d batches", len(clips), len(rows),
             len(work), len(batches))
    if batches:
        with distributed.cluster(settings):
            refs = [ray.put([work[i] for i in b]) for b in batches]
            ds = ray.data.from_items([{"batch_id": b} for b in range(len(batches))], override_num_blocks=len(batches))
            ds = ds.map_batches(LabelActor, fn_constructor_kwargs={"params": params, "work": refs},
                                **distributed.actor_pool_args(settings))
            done = 0
            for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                done += _save(out, clips, keys, rows, store, params)
                if on_batch:
                    on_batch({"done": done, "total": len(work), "pid": int(out["pid"][0])})
                log.info("pseudo_label (ray): %d / %d clips labelled", done, len(work))
    return labeller.index_rows(clips, keys, rows, store, params)


def _save(out: dict, clips: list[dict], keys: list[str], rows: dict, store: labeller.LabelStore,
          params: dict) -> int:
    for item, data, seconds, error in zip(out["item"], out["npz"], out["detect_seconds"], out["error"],
                                          strict=True):
        i = int(item)
        label = _from_npz(data)
        if error:  # labelled from empty frames: stored under their key, as the local runner does
            log.warning("pseudo_label (ray): %s failed (%s): labelled as empty", clips[i]["clip_id"], error)
            keys[i] = labeller.content_hash(params, frames=labeller.empty_frames(clips[i]),
                                            extra=labeller._fusion_key(clips[i]))
        store.save(keys[i], label)
        rows[i] = {"cache_hit": False, "detect_seconds": float(seconds), "fit_seconds": float(label["fit_seconds"])}
    return len(out["item"])
