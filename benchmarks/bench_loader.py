"""Benchmark of the training data loader (`dimo.training.data_loader`) as the latent cache grows.

A synthetic latent cache of N, 10N and 100N clips (safetensors partitions written and read through Kedro's
PartitionedDataset + `dimo.datasets.SafetensorsDataset`, as `latent_cache` in conf/base/catalog_training.yml;
small tensors of the cache's fields, two clip sizes, half single views and half 3-view groups, a stage-2 mix) is
read for a fixed number of micro-batches by each configuration, each in a fresh process:

* `direct`: the loop's batches built in the training process (`PairBatches.batch`, no DataLoader): the only path
  before the loader existed, so `--before-src <old src>` runs it on old code for the before/after figures;
* `loader-w0-keep128`: `data_loader.micro_batches` as the toy default runs it: num_workers 0, micro-batch 1, an
  LRU of 128 clips;
* `loader-w2-micro2`: 2 worker processes, prefetch 4, micro-batch 2 over both sizes (size buckets), no LRU.

Reported per run: samples/s and the peak memory of the process plus its workers (psutil, sampled every 50 ms):
RSS summed over processes (a forked worker's pages shared with the parent count once per process, so this
overstates) and PSS (shared pages split between the processes sharing them), and ru_maxrss. The batch-building
processes use `--threads` torch threads (default 1, as DataLoader workers do): on a shared 2-core machine more
threads mostly wait for each other.

    python benchmarks/bench_loader.py [--clips 40] [--scales 1 10 100] [--micro-batches 2000] [--threads 1]
                                      [--before-src /tmp/old/src] [--workdir /tmp/dimo_bench_loader]
Writes benchmarks/results/loader.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMES, LATENT_FRAMES, TEXT = 17, 5, (16, 64)
SIZES = [(8, 8), (6, 10)]  # latent h, w; driving frames are 4x (a ~32 px crop)
CONFIGS = {"direct": dict(num_workers=0, micro=1, direct=True),
           "loader-w0-keep128": dict(num_workers=0, micro=1, keep_clips=128),
           "loader-w2-micro2": dict(num_workers=2, micro=2, prefetch_factor=4)}


def clip(seed: int, size: tuple[int, int]) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = size
    return {"latents": torch.randn(16, LATENT_FRAMES, h, w, generator=g),
            "text_embeddings": torch.randn(*TEXT, generator=g), "text_mask": torch.ones(TEXT[0], dtype=torch.uint8),
            "driving_frames": torch.randint(0, 256, (FRAMES, 3, 4 * h, 4 * w), generator=g, dtype=torch.uint8),
            "hand_keypoints": torch.rand(FRAMES, 2, 21, 3, generator=g),
            "wrist_keypoints": torch.rand(FRAMES, 2, 3, generator=g),
            "pose_targets": torch.randn(FRAMES, 306, generator=g), "pose_valid": torch.ones(FRAMES, 306)}


def partitions(folder: Path):
    from kedro_datasets.partitions import PartitionedDataset

    return PartitionedDataset(path=str(folder), dataset="dimo.datasets.SafetensorsDataset",
                              filename_suffix=".safetensors")


def build_cache(folder: Path, clips: int) -> None:
    """`clips` partitions (half single views, half in groups of 3 views) and the stage's pairs table."""
    import pandas as pd

    if (folder / "pairs.parquet").is_file():
        return
    rows, lazy = [], {}
    singles = clips // 2
    for i in range(clips):
        cid = f"c{i:06d}"
        group = cid if i < singles else f"g{(i - singles) // 3:05d}"
        size = SIZES[(i if i < singles else (i - singles) // 3) % 2]  # a group's views share a size
        lazy[cid] = (lambda i=i, size=size: clip(i, size))  # PartitionedDataset saves callables lazily
        rows.append((cid, group))
    partitions(folder / "latents").save(lazy)
    table = pd.DataFrame(rows, columns=["clip_id", "group_id"])
    pairs = [("reconstruction", c, c, c) for c in table.clip_id[:singles]]
    for group, members in table[singles:].groupby("group_id"):
        pairs += [("cross_view", a, b, group) for a in members.clip_id for b in members.clip_id if a != b]
    pd.DataFrame(pairs, columns=["kind", "driving_clip_id", "target_clip_id", "group_id"]).to_parquet(
        folder / "pairs.parquet")


class PeakRSS:
    """Peak of (this process + its children) RSS, sampled in a thread."""

    def __init__(self, every_s: float = 0.05):
        import psutil

        self.proc, self.every_s, self._stop = psutil.Process(), every_s, threading.Event()
        self.peak = self.peak_pss = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.every_s)

    def sample(self) -> None:
        rss = pss = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                full = p.memory_full_info()
            except Exception:  # a worker that just ended
                continue
            rss, pss = rss + full.rss, pss + full.pss
        self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.sample()


def run_one(spec: dict) -> dict:
    """One configuration on one cache, in this (fresh) process."""
    import pandas as pd
    import torch

    from dimo.training.batches import PairBatches

    torch.set_num_threads(spec["threads"])
    folder, cfg = Path(spec["folder"]), CONFIGS[spec["config"]]
    pairs = pd.read_parquet(folder / "pairs.parquet")
    cache = partitions(folder / "latents").load()  # clip id -> lazy load, as the catalog hands it over
    mix = {"reconstruction": 0.5, "cross_view": 0.5}
    with PeakRSS() as rss:
        rss_start = rss.proc.memory_info().rss
        keep = {"keep_clips": cfg["keep_clips"]} if "keep_clips" in cfg else {}  # the old code has no LRU
        batches = PairBatches(pairs, cache, mix, cfg["micro"], seed=0, accumulation=2, **keep)
        count = spec["micro_batches"]
        t0 = time.perf_counter()
        if cfg.get("direct"):
            for m in range(count):
                batches.batch(*divmod(m, 2), 0)
        else:
            from dimo.training.data_loader import LoaderSettings, micro_batches

            settings = LoaderSettings(num_workers=cfg["num_workers"], prefetch_factor=cfg.get("prefetch_factor", 2))
            for _ in micro_batches(batches, 0, 0, count // 2, settings):
                pass
        seconds = time.perf_counter() - t0
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"clips": len(cache), "pairs": len(pairs), "micro_batches": count, "micro_batch": cfg["micro"],
            "num_workers": cfg["num_workers"], "keep_clips": cfg.get("keep_clips", 0), "seconds": seconds,
            "samples_per_s": count * cfg["micro"] / seconds,
            "rss_start_mb": rss_start / 2**20, "peak_rss_mb": rss.peak / 2**20,
            "rss_growth_mb": (rss.peak - rss_start) / 2**20, "peak_pss_mb": rss.peak_pss / 2**20,
            "ru_maxrss_mb": {"self": kib[0] / 1024, "children": kib[1] / 1024}}


def child(spec: dict, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                         env=env, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=40, help="clips at scale 1")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--micro-batches", type=int, default=2000, help="micro-batches each run reads")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the batch-building process")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--before-src", type=Path, help="a src/ folder of the code before the loader: runs `direct` there")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dimo_bench_loader"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/loader.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    runs = []
    for scale in args.scales:
        folder = args.workdir / f"clips{args.clips * scale}"
        t0 = time.perf_counter()
        build_cache(folder, args.clips * scale)
        print(f"cache of {args.clips * scale} clips ready in {time.perf_counter() - t0:.1f} s ({folder})", flush=True)
        todo = [(c, ROOT / "src", "after") for c in args.configs]
        if args.before_src:
            todo.insert(0, ("direct", args.before_src, "before"))
        for config, src, code in todo:
            spec = {"folder": str(folder), "config": config, "micro_batches": args.micro_batches,
                    "threads": args.threads}
            r = {"scale": scale, "config": config, "code": code, **child(spec, src)}
            runs.append(r)
            print(f"  {scale:>4}x {r['clips']:>6} clips  {code:<6} {config:<17} {r['samples_per_s']:>8.0f} samples/s"
                  f"  peak RSS {r['peak_rss_mb']:>6.0f} MB (+{r['rss_growth_mb']:.0f} MB while reading)"
                  f"  PSS {r['peak_pss_mb']:>6.0f} MB", flush=True)
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "threads": args.threads,
              "clip_bytes": sum(v.numel() * v.element_size() for v in clip(0, SIZES[0]).values()),
              "micro_batches": args.micro_batches, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
