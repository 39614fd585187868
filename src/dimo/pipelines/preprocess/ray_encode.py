"""`preprocess.runner: ray`: the latent cache encoded by a Ray Data actor pool (docs/ray.md).

The same batches as the local runner (`_batches`: same-size clips, `batch_clips` at a time) go to actors that
each hold the codec, the text encoder (and the I2V image encoder) once, on `ray.gpus_per_actor` GPUs. Clips
travel as their files' bytes, labels as their .npz bytes, so the workers need no shared disk. Entries come back
as safetensors bytes; the catalog saves them in order through the same lazy loaders as the local runner.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from dimo import clip_table, distributed, video_io

log = logging.getLogger(__name__)


class EncodeActor:
    """One pool member: the codec and encoders, loaded once; encodes whole batches."""

    def __init__(self, codec, params: dict, work: list):
        from dimo.inference import resolve_device
        from dimo.models import text_encoder

        from .nodes import ImageEncoder

        device = resolve_device(params.get("device"))
        self.codec = codec.eval().to(device)
        self.texts = text_encoder.from_spec(params["text_encoder"]).to(device)
        path = (params.get("image_encoder") or {}).get("path")
        self.images = ImageEncoder(path, device) if path else None
        self.driving_size, self.work = params["driving_size"], work

    def __call__(self, batch: dict) -> dict:
        import ray
        from safetensors.torch import save

        from .nodes import batch_entries

        ids, blobs = [], []
        for b in batch["batch_id"]:
            rows, videos = ray.get(self.work[int(b)])
            frames = [f if e is None else video_io.read_video_bytes(e, r.path)[0]
                      for r, (f, e) in zip(rows, videos, strict=True)]
            for row, entry in zip(rows, batch_entries(rows, frames, self.codec, self.texts, self.driving_size,
                                                       self.images), strict=True):
                ids.append(row.clip_id)
                blobs.append(save(entry))
        return {"clip_id": np.asarray(ids), "entry": np.asarray(blobs, dtype=object)}


def _work(batch: list, loaders: dict) -> tuple[list, list]:
    """A batch as plain data: rows (label file inlined as bytes) and each clip's file bytes (or frames)."""
    rows, videos = [], []
    for r in batch:
        video = clip_table.load_clip(loaders, r.clip_id)
        with open(r.label_path, "rb") as f:
            label = io.BytesIO(f.read())
        rows.append(SimpleNamespace(**{**r._asdict(), "label_path": label}))
        videos.append((video.frames, None) if video.encoded is None else (None, video.encoded))
    return rows, videos


def ray_cache(batches: list[list], loaders: dict, codec, params: dict) -> dict[str, Callable[[], dict]]:
    """clip id -> lazy entry, in table order, as `encode_clips`; the pool runs while the catalog saves them
    (one batch read ahead per actor), and the cluster started for it stops after the last entry."""
    import ray
    from safetensors.torch import load

    settings = distributed.RaySettings.from_params(params.get("ray"))
    info = distributed.connect(settings)
    refs = [ray.put(_work(b, loaders)) for b in batches]
    ds = ray.data.from_items([{"batch_id": i} for i in range(len(batches))], override_num_blocks=len(batches))
    ds = ds.map_batches(EncodeActor, fn_constructor_kwargs={"codec": codec, "params": params, "work": refs},
                        **distributed.actor_pool_args(settings))
    results = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0))
    done: dict[str, bytes] = {}
    state = {"encoded": 0, "saved": 0, "total": sum(len(b) for b in batches)}

    def entry(clip_id: str) -> Callable[[], dict]:
        def get() -> dict:
            while clip_id not in done:
                out = next(results)
                done.update(zip((str(c) for c in out["clip_id"]), out["entry"], strict=True))
                state["encoded"] += len(out["clip_id"])
                log.info("preprocess (ray): %d / %d clips encoded", state["encoded"], state["total"])
            data = done.pop(clip_id)
            state["saved"] += 1
            if state["saved"] == state["total"]:
                for _ in results:  # drained: Ray Data's executor ends before the cluster does
                    pass
                distributed.disconnect(info)
            return load(data)
        return get

    return {r.clip_id: entry(r.clip_id) for b in batches for r in b}
