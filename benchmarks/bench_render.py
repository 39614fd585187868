"""Render throughput (frames/s at 128 and 256 px) and the default synthetic dataset's build time and size.

    cd /work/main && source scripts/env.sh && python benchmarks/bench_render.py [--skip-build]

The build runs `kedro run --pipelines synthesize_views` (conf/base sizes) in a subprocess, so it includes
Kedro/MLflow start-up and anny's load, and writes the real dataset under data/01_raw/synthetic.
Results: printed and saved to benchmarks/results/bench_render.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def render_throughput(sizes=(128, 256), frames: int = 33, repeats: int = 3) -> dict:
    from dimo.synthesis import body, cameras, motion, render

    model = body.load_model()
    ident = body.sample_identities(1, 0)[0]
    rng = np.random.default_rng(0)
    win = motion.sample_window("walk", frames, 16, rng)
    t0 = time.perf_counter()
    posed = motion.retarget(model, win, ident.phenotype(), motion.animate_hands(frames, 16, rng))
    pose_s = time.perf_counter() - t0
    colors = body.vertex_colors(ident)
    out = {"pose_frames_per_s": frames / pose_s, "gl_renderer": render._context().info["GL_RENDERER"]}
    for size in sizes:
        r = render.renderer(size, size)
        path = cameras.build_path("arc_left_30", frames, 16, np.array([0.0, 0.0, 0.9]), 30.0, 10.0, 4.0,
                                  size * 1.2, size, size, rng)
        r.render(posed.vertices, colors, path.K, path.E, render.Scene())  # warm-up (shader compile)
        best = min(_timed(lambda: r.render(posed.vertices, colors, path.K, path.E, render.Scene()))
                   for _ in range(repeats))
        out[f"render_fps_{size}px"] = frames / best
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build_default() -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipelines", "synthesize_views"], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"kedro run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    import pandas as pd

    syn = ROOT / "data/01_raw/synthetic"
    table = pd.read_parquet(syn / "clip_table.parquet")
    size = {name: sum(f.stat().st_size for f in (syn / name).rglob("*") if f.is_file()) for name in ("clips", "gt")}
    return {"build_seconds": seconds, "clips": len(table), "performances": int(table["group_id"].nunique()),
            "frames": int(table["num_frames"].sum()), "height": int(table["height"].iloc[0]),
            "width": int(table["width"].iloc[0]), "num_frames": int(table["num_frames"].iloc[0]),
            "supervision": table["supervision"].value_counts().to_dict(),
            "split": table["split"].value_counts().to_dict(),
            "camera_motions_used": int(table["camera_motion"].nunique()),
            "identities": int(table["identity_id"].nunique()), "motions": int(table["motion_name"].nunique()),
            "mb_clips": size["clips"] / 1e6, "mb_ground_truth": size["gt"] / 1e6,
            "mb_total": sum(size.values()) / 1e6 + (syn / "clip_table.parquet").stat().st_size / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-build", action="store_true", help="only measure render throughput")
    args = ap.parse_args()
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "render": render_throughput()}
    if not args.skip_build:
        result["default_build"] = build_default()
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks/results/bench_render.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
