"""Benchmark of the toy codec: fit it on the train clips exactly as the `prepare_codec` node does (same inputs from
the catalog, same parameters), then score it on the test split's clips (full frames, full clips).

Prints and writes benchmarks/results/codec.json: held-out PSNR (dB) and SSIM, fit wall-clock and process CPU
seconds, the machine's load average before and after (the 2 cores are shared: CPU s / wall s ~ cores really had).

    python benchmarks/bench_codec.py [--env base] [--set toy_steps=600 --set 'toy_vae={"base_dim": 16}'] \
                                     [--out benchmarks/results/codec.json]
Needs the default chain's preprocess inputs (labelled_clip_table and the clip folders) under data/.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import results_io  # benchmarks/results_io.py (scripts run as `python benchmarks/<name>.py`)

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="base", help="Kedro environment whose parameters and catalog are used")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a key of preprocess.codec (value parsed as JSON)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/codec.json")
    args = ap.parse_args(argv)

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from dimo.pipelines.preprocess.nodes import prepare_codec

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=None if args.env == "base" else args.env) as session:
        context = session.load_context()
        params = dict(context.params["preprocess"])
        params["codec"] = {**params["codec"], **results_io.overrides(args.set)}
        catalog = context.catalog
        inputs = [catalog.load(name) for name in ("labelled_clip_table", "synthetic_clips", "ingested_clips")]
    if params["codec"].get("pretrained_path"):
        sys.exit("preprocess.codec.pretrained_path is set: this benchmark measures the toy codec only")
    load_before = os.getloadavg()
    _, metrics = prepare_codec(*inputs, params)
    clips = inputs[0]
    result = {
        "psnr_db": metrics["codec_test_psnr_db"]["value"],
        "ssim": metrics["codec_test_ssim"]["value"],
        "fit_wall_s": metrics["codec_fit_wall_s"]["value"],
        "fit_cpu_s": metrics["codec_fit_cpu_s"]["value"],
        "test_clips": int((clips["split"] == "test").sum()),
        "train_clips": int((clips["split"] == "train").sum()),
        "codec": params["codec"],
        "seed": params["seed"],
        "machine": results_io.machine(load_avg_before=load_before),
    }
    return results_io.write(result, args.out)


if __name__ == "__main__":
    main()
