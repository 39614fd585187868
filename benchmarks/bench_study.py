"""Benchmark of the study's training step on this machine (CPU): what `conf/study` is sized from.

For each candidate model config, one real training example (a clip of the latent cache at the data's resolution)
goes through `DimoModel.training_losses` forward + backward: wall time -> samples/s, FLOPs of that step counted
with torch.utils.flop_counter (bench_model's counting), achieved FLOP/s as a fraction of this machine's fp32
matmul peak measured in the same run, right beside each config (the 2 cores are shared: mins everywhere).
Then the study's budget: the unit list of conf/study (`dimo.study.units`) x the steps it asks, at the measured rate.

    python benchmarks/bench_study.py [--configs tiny small] [--cache data/05_model_input/latents] [--repeats 5]
Writes benchmarks/results/bench_study.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(__file__))
import results_io  # benchmarks/results_io.py (scripts run as `python benchmarks/<name>.py`)
from bench_model import matmul_flops_per_s  # noqa: E402  (the same peak probe as bench_model)

from dimo.models import DimoModel, configs  # noqa: E402
from dimo.training.batches import collate  # noqa: E402


def cache_example(path: Path) -> dict:
    """One training example (driving = target: a reconstruction pair) from a latent-cache file."""
    clip = load_file(str(path))
    return collate([{
        "target_latents": clip["latents"], "reference_latents": clip["latents"][:, :1],
        "text_embeddings": clip["text_embeddings"], "text_mask": clip["text_mask"].bool(),
        "driving_frames": clip["driving_frames"].float() / 127.5 - 1.0, "hand_keypoints": clip["hand_keypoints"],
        "wrist_keypoints": clip["wrist_keypoints"], "pose_targets": clip["pose_targets"],
        "pose_valid": clip["pose_valid"]}])


def bench_step(name: str, batch: dict, repeats: int) -> dict:
    cfg = configs.get(name, text_in_dim=batch["text_embeddings"].shape[-1])
    torch.manual_seed(0)
    model = DimoModel(cfg).train()

    def step():
        model.zero_grad(set_to_none=True)
        out = model.training_losses(batch, step=0, generator=torch.Generator().manual_seed(0))
        out["loss"].backward()

    step()  # warm-up (allocator, lazy init)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"config": name, "params": sum(p.numel() for p in model.parameters()),
            "latent_shape": list(batch["target_latents"].shape[1:]), "fwd_bwd_s_min": best,
            "fwd_bwd_s_median": statistics.median(times), "samples_per_s": 1.0 / best,
            "samples_per_s_median": 1.0 / statistics.median(times), "flops_per_step": flops,
            "achieved_flops_per_s": flops / best}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
    ap.add_argument("--cache", default="data/05_model_input/latents")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_study.json"))
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    files = sorted(Path(args.cache).glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{args.cache}: no latent-cache files (run preprocess first)")
    batch = cache_example(files[0])
    steps = []
    for name in args.configs:
        peak = max(matmul_flops_per_s(512), matmul_flops_per_s(1024))
        r = bench_step(name, batch, args.repeats)
        peak = max(peak, matmul_flops_per_s(1024))
        r["matmul_fp32_flops_per_s_same_time"] = peak
        r["fraction_of_matmul"] = r["achieved_flops_per_s"] / peak
        steps.append(r)
        print(f"{name:6s} latent {r['latent_shape']} params={r['params'] / 1e6:.2f}M  fwd+bwd "
              f"{r['fwd_bwd_s_min'] * 1e3:.0f} ms (median {r['fwd_bwd_s_median'] * 1e3:.0f}) = "
              f"{r['samples_per_s']:.2f} samples/s  {r['flops_per_step'] / 1e9:.2f} GFLOP/step  "
              f"{r['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s = {100 * r['fraction_of_matmul']:.1f}% of the "
              f"{peak / 1e9:.0f} GFLOP/s matmul measured alongside")
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "load_avg_1min": os.getloadavg()[0]},
              "clip": files[0].stem, "train_step": steps}
    results_io.write(result, args.out)


if __name__ == "__main__":
    main()
