"""Evaluation throughput on this machine (CPU): frames per second of each registered per-pair metric, of the
pseudo-labeller run on generated frames (pose accuracy / camera following), and of generation with a tiny model
through the inference API, at the toy benchmark's size (33 frames, 128 x 128).

    python benchmarks/bench_evaluate.py [--frames 33] [--size 128] [--videos 4] [--steps 8]
Writes benchmarks/results/bench_evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from dimo import inference, video_io
from dimo.evaluation import benchmark, registry
from dimo.evaluation import metrics as M

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, frames: int) -> dict:
    t0 = time.perf_counter()
    value = fn()
    s = time.perf_counter() - t0
    return {"seconds": s, "frames_per_s": frames / s, "value": None if isinstance(value, M.MetricUnavailable)
            else float(value), "unavailable": str(value) if isinstance(value, M.MetricUnavailable) else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    T, S, N = args.frames, args.size, args.videos
    target = [rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8) for _ in range(N)]
    generated = [np.clip(v.astype(np.int16) + rng.integers(-30, 30, v.shape), 0, 255).astype(np.uint8) for v in target]
    n = T * N
    out = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "python": platform.python_version(), "load_before": os.getloadavg()},
           "shape": {"videos": N, "frames": T, "size": S}, "metrics": {}}
    weights = M.WeightsConfig()
    for name in registry.names("pair"):
        metric = registry.get(name)
        metric.compute(generated[:1], target[:1], weights)  # load its network once, outside the timing
        out["metrics"][name] = timed(lambda metric=metric: metric.compute(generated, target, weights), n)

    # the labeller on "generated" frames: real rendered frames of a person, so the detector finds one
    clip = next(iter(sorted((ROOT / "data/01_raw/synthetic/clips").glob("*.mp4"))), None)
    if clip is not None:
        frames = video_io.read_video(clip)[0]
        params = yaml.safe_load((ROOT / "conf/base/parameters_pseudo_label.yml").read_text())["pseudo_label"]
        pairs = pd.DataFrame([{"pair_id": f"p{i}", "target_gt_path": None, "target_label_path": None}
                              for i in range(2)])
        gen = {f"p{i}": np.ascontiguousarray(frames[:, :, ::-1] if i else frames) for i in range(2)}
        t0 = time.perf_counter()
        benchmark.pose_and_camera(pairs, gen, params, progress=False)
        s = time.perf_counter() - t0
        out["pose_labelling"] = {"clip": clip.name, "frames": 2 * len(frames), "seconds": s,
                                 "frames_per_s": 2 * len(frames) / s}

    # generation through the inference API: a tiny random model (speed only)
    from dimo.models import DimoModel, LatentCodec, configs

    torch.manual_seed(0)
    dimo = benchmark.dimo_from_model(DimoModel(configs.get("tiny", text_in_dim=384)), LatentCodec.tiny(),
                                     {"kind": "minilm", "path": None, "max_length": 32})
    with tempfile.TemporaryDirectory() as tmp:
        video_io.write_video(f"{tmp}/t.mp4", target[0], 16)
        pairs = pd.DataFrame([{"pair_id": "g", "reference_path": f"{tmp}/t.mp4", "driving_path": f"{tmp}/t.mp4",
                               "prompt": "A person moves. The camera remains static.", "keypoints_path": None}])
        opts = inference.Options(num_steps=args.steps, guidance_text=1.0)
        benchmark.generate(dimo, pairs, opts, progress=False)  # warm-up
        t0 = time.perf_counter()
        benchmark.generate(dimo, pairs, opts, progress=False)
        s = time.perf_counter() - t0
    out["generation"] = {"model": "tiny (random init)", "steps": args.steps, "frames": T, "seconds": s,
                         "frames_per_s": T / s}
    out["machine"]["load_after"] = os.getloadavg()
    (ROOT / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks/results/bench_evaluate.json").write_text(json.dumps(out, indent=2))
    print(f"{N} videos x {T} frames at {S}x{S} on {out['machine']['torch_threads']} threads "
          f"(load {out['machine']['load_before'][0]:.1f})")
    for k, v in out["metrics"].items():
        print(f"  {k:11s} {v['frames_per_s']:8.1f} frames/s" + (f"  ({v['unavailable']})" if v["unavailable"] else ""))
    if "pose_labelling" in out:
        print(f"  labeller    {out['pose_labelling']['frames_per_s']:8.1f} frames/s (detect + fit, generated frames)")
    print(f"  generation  {out['generation']['frames_per_s']:8.1f} frames/s ({args.steps} Euler steps, tiny model)")


if __name__ == "__main__":
    main()
