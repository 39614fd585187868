"""Benchmark of dimo.models on this machine (CPU).

* forward+backward wall time of `DimoModel.training_losses` for toy configs, FLOPs of that step counted with
  torch.utils.flop_counter, achieved FLOP/s, and the same-run fp32 matmul FLOP/s for reference;
* parameter counts of every part at real scale (Wan2.1-T2V-1.3B, Wan2.1-I2V-14B), built on the meta device.

    python benchmarks/bench_model.py [--configs tiny mid] [--repeats 5] [--threads N]
Writes benchmarks/results/bench_model.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dimo.models import DimoModel, configs, stock_param_count

# video size per toy config: (frames, pixels); latent = (1 + (T-1)/4, px/8, px/8)
SHAPES = {"tiny": (17, 64), "small": (17, 128), "mid": (17, 128)}


def matmul_flops_per_s(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def make_batch(cfg, frames: int, px: int, batch_size: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)
    lat = (batch_size, 16, (frames - 1) // 4 + 1, px // 8, px // 8)
    kp = torch.rand(batch_size, frames, 2, 21, 3, generator=g)
    kp[..., :2] *= px
    return {
        "target_latents": torch.randn(lat, generator=g),
        "reference_latents": torch.randn(*lat[:2], 1, *lat[3:], generator=g),
        "text_embeddings": torch.randn(batch_size, 32, cfg.text_in_dim, generator=g),
        "driving_frames": torch.rand(batch_size, frames, 3, px, px, generator=g) * 2 - 1,
        "hand_keypoints": kp,
        "pose_targets": torch.randn(batch_size, frames, 306, generator=g),
        "pose_valid": torch.ones(batch_size, frames),
    }


def bench_train_step(name: str, repeats: int) -> dict:
    cfg = configs.get(name)
    frames, px = SHAPES[name]
    torch.manual_seed(0)
    model = DimoModel(cfg).train()
    batch = make_batch(cfg, frames, px)

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
    # min = least disturbed run (the 2 cores are shared); the matmul reference is also a min, so they compare.
    return {"config": name, "frames": frames, "pixels": px, "batch_size": 1,
            "params": sum(p.numel() for p in model.parameters()), "fwd_bwd_s_median": statistics.median(times),
            "fwd_bwd_s_min": min(times), "flops_per_step": flops, "achieved_flops_per_s": flops / min(times)}


def count(module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters()) if module is not None else 0


def real_scale_counts(name: str) -> dict:
    cfg = configs.get(name)
    with torch.device("meta"):
        model = DimoModel(cfg)
    gen = model.generator
    motion = sum(math.prod(p.shape) for n, p in gen.named_parameters() if "motion" in n)
    stock_cfg = dict(cfg.generator)
    stock = stock_param_count(stock_cfg)
    parts = {
        "generator_total": count(gen),
        "generator_stock_equivalent": stock,  # stock Wan with the same in_channels
        "generator_new_motion": motion,
        "body_encoder": count(model.body_encoder),
        "hand_encoder": count(model.hand_encoder),
        "geometric_decoder": count(model.geometric_decoder),
        "text_projection": count(model.text_projection),
    }
    parts["total"] = count(model)
    if cfg.generator["in_channels"] != 16:
        parts["stock_wan_t2v_in16"] = stock_param_count({**stock_cfg, "in_channels": 16})
    return {"config": name, "params": parts,
            "dims": {k: cfg.generator[k] for k in ("num_layers", "num_attention_heads", "attention_head_dim",
                                                   "ffn_dim", "in_channels", "image_dim")}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["tiny", "mid"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_model.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    # The cores are shared with other jobs: take the reference right before each config, and mins everywhere.
    steps, peaks = [], []
    for name in args.configs:
        local = max(matmul_flops_per_s(512), matmul_flops_per_s(1024))
        r = bench_train_step(name, args.repeats)
        local = max(local, matmul_flops_per_s(1024))
        peaks.append(local)
        r["matmul_fp32_flops_per_s_same_time"] = local
        r["fraction_of_matmul"] = r["achieved_flops_per_s"] / local
        steps.append(r)
    peak = max(peaks)
    print(f"fp32 matmul: best {peak / 1e9:.1f} GFLOP/s, per config {[round(p / 1e9, 1) for p in peaks]} "
          f"({torch.get_num_threads()} threads)")
    for r in steps:
        name = r["config"]
        print(f"{name:6s} T={r['frames']} {r['pixels']}px params={r['params'] / 1e6:.2f}M  fwd+bwd "
              f"{r['fwd_bwd_s_min'] * 1e3:.0f} ms (median {r['fwd_bwd_s_median'] * 1e3:.0f})  "
              f"{r['flops_per_step'] / 1e9:.2f} GFLOP/step  {r['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s = "
              f"{100 * r['fraction_of_matmul']:.1f}% of matmul measured alongside")
    real = [real_scale_counts(n) for n in ("wan2.1-t2v-1.3b", "wan2.1-i2v-14b")]
    for r in real:
        print(f"{r['config']}: " + ", ".join(f"{k}={v / 1e6:.1f}M" for k, v in r["params"].items()))
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
              "matmul_fp32_flops_per_s": peak,
              "matmul_fp32_flops_per_s_per_config": peaks, "train_step": steps, "real_scale_params": real}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
