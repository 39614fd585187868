"""Benchmark of the pose probe (issue 14, item 3): fit `dimo.evaluation.pose_probe` on the train split's synthetic
renders, then read the train renders, the held-out test renders and the test renders after a codec round-trip.

Prints and writes benchmarks/results/pose_probe.json: PCK at 0.1 of the person's height and mean / median joint
error (px) per set, fit wall-clock and process CPU seconds (the 2 cores are shared: CPU s / wall s ~ cores really
had), the load average before and after, and the fit parameters.

    python benchmarks/bench_pose_probe.py [--set epochs=6 --set width=24] [--codec data/06_models/codec]
                                          [--codec-mix-clips 8] [--threads 1] [--out benchmarks/results/pose_probe.json]
Needs the synthetic clips and their gt npz (data/01_raw/synthetic) and, for the codec rows, a codec folder (the
default chain's data/06_models/codec); without one the codec rows are skipped.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import results_io  # benchmarks/results_io.py (scripts run as `python benchmarks/<name>.py`)
import torch

from dimo.evaluation import pose_probe as pp
from dimo.models.vae import LatentCodec
from dimo.video_io import read_video

ROOT = Path(__file__).resolve().parents[1]


def load_split(table: pd.DataFrame, split: str, root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per clip of `split`: uint8 frames (T, H, W, 3) and the BODY_13 keypoints (T, 13, 2) px."""
    rows = table[table["split"] == split]
    frames = [read_video(root / r.path)[0] for r in rows.itertuples()]
    joints = [np.load(root / r.gt_path)["keypoints_2d"][:, list(pp.BODY_13)].astype(np.float32)
              for r in rows.itertuples()]
    return frames, joints


def _accuracy(probe, frames: list[np.ndarray], joints: list[np.ndarray]) -> dict:
    f, j = np.concatenate(frames), np.concatenate(joints)
    acc = pp.probe_accuracy(probe, f, j, pp.in_frame(j, *f.shape[1:3]))
    return {k: round(acc[k], 4) if isinstance(acc[k], float) else acc[k]
            for k in ("pck_mean", "err_px_mean", "err_px_median", "frames")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip-table", type=Path, default=ROOT / "data/01_raw/synthetic/clip_table.parquet")
    ap.add_argument("--codec", type=Path, default=ROOT / "data/06_models/codec", help="LatentCodec folder")
    ap.add_argument("--codec-mix-clips", type=int, default=0,
                    help="also fit on the codec round-trips of this many train clips (same joints)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a FIT_DEFAULTS key")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a busy 2-core machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pose_probe.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {**pp.FIT_DEFAULTS, **results_io.overrides(args.set)}

    table = pd.read_parquet(args.clip_table)
    train_f, train_j = load_split(table, "train", ROOT)
    test_f, test_j = load_split(table, "test", ROOT)
    codec = LatentCodec.from_pretrained(str(args.codec)) if args.codec.is_dir() else None
    t0 = time.perf_counter()
    test_codec = [pp.codec_roundtrip(codec, f) for f in test_f] if codec is not None else []
    mix = [pp.codec_roundtrip(codec, f) for f in train_f[: args.codec_mix_clips]] if codec is not None else []
    codec_s = time.perf_counter() - t0

    fit_f, fit_j = np.concatenate(train_f + mix), np.concatenate(train_j + train_j[: len(mix)])
    load_before = os.getloadavg()
    probe = pp.fit_pose_probe(fit_f, fit_j, pp.in_frame(fit_j, *fit_f.shape[1:3]), params, seed=args.seed)
    result = {
        "train": _accuracy(probe, train_f, train_j),
        "test": _accuracy(probe, test_f, test_j),
        "test_codec": _accuracy(probe, test_codec, test_j) if test_codec else None,
        "fit_wall_s": round(probe.fit_seconds, 1), "fit_cpu_s": round(probe.fit_cpu_seconds, 1),
        "fit_epochs": probe.fit_epochs, "fit_frames": int(len(fit_f)), "codec_mix_clips": len(mix),
        "codec": str(args.codec.relative_to(ROOT) if args.codec.is_relative_to(ROOT) else args.codec)
        if codec is not None else None, "codec_roundtrip_s": round(codec_s, 1),
        "params": {k: v for k, v in params.items()}, "seed": args.seed,
        "machine": results_io.machine(load_avg_before=load_before),
    }
    return results_io.write(result, args.out)


if __name__ == "__main__":
    main()
