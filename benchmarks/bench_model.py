"""Benchmark of dimo.models on this machine (CPU).

* forward+backward wall time of `DimoModel.training_losses` for toy configs side by side with the stock diffusers
  Wan step of the same size (issue 13, item 7: the 3DiMo step should reach >= 90% of the stock step's FLOP/s),
  FLOPs of both counted the same way (`count_flops`), the same-run fp32 matmul FLOP/s for reference, and the
  time and FLOP/s of every part of the 3DiMo step;
* parameter counts of every part at real scale (Wan2.1-T2V-1.3B, Wan2.1-I2V-14B), built on the meta device.

    python benchmarks/bench_model.py [--configs tiny mid] [--repeats 5] [--rounds 3] [--threads N]
Writes benchmarks/results/bench_model.json.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import results_io  # benchmarks/results_io.py (scripts run as `python benchmarks/<name>.py`)
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from einops import rearrange
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from dimo.models import DimoModel, configs, crop_hands, stock_param_count
from dimo.models.generator import _STOCK_KEYS as STOCK_KEYS

# video size per toy config: (frames, pixels); latent = (1 + (T-1)/4, px/8, px/8)
SHAPES = {"tiny": (17, 64), "small": (17, 128), "mid": (17, 128)}


# "wall": seconds on the wall clock (what a user waits); "cpu": this thread's CPU seconds, with torch on 1 thread
# (time the scheduler gives to other jobs on the shared cores is not counted: a load-proof per-FLOP comparison).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCKS["wall"]


def matmul_flops_per_s(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    return 2 * n**3 / best_time(lambda: a @ b, repeats)


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


def count_flops(fn) -> int:
    """FLOPs of one call of `fn`, torch's FlopCounterMode plus the CPU flash-attention kernels it does not list
    (torch counts SDPA only on its CUDA kernels), with torch's own SDPA formulas. Used the same way for every
    model and part here."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_SDPA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
                  torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward}


def best_time(fn, repeats: int) -> float:
    """Least disturbed of `repeats` calls (the cores are shared: the min is the run with the fewest intruders)."""
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def _backward(out) -> None:
    """A loss on any output of a part, so its backward runs as in the step (sum of squares: a full gradient)."""
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out.float().square().mean().backward()


def dimo_and_stock_steps(name: str) -> tuple[dict, dict]:
    """The 3DiMo training step and the stock diffusers Wan step of the same size, as zero-argument callables,
    plus the 3DiMo step's parts. Stock = `WanTransformer3DModel` with the generator's stock arguments (same width,
    depth, heads, in_channels, text width), fed the same DiT input and projected text, flow-matching MSE loss."""
    cfg = configs.get(name)
    frames, px = SHAPES[name]
    torch.manual_seed(0)
    model = DimoModel(cfg).train()
    stock = WanTransformer3DModel(**{k: v for k, v in cfg.generator.items() if k in STOCK_KEYS}).train()
    batch = make_batch(cfg, frames, px)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    x0 = batch["target_latents"]
    with torch.no_grad():
        dit_x = model.dit_input(torch.randn_like(x0), batch["reference_latents"])
        text = model._text(batch["text_embeddings"], None)
        z = model.encode_motion(batch["driving_frames"], batch["hand_keypoints"], None, None, gen())
        crops, _ = crop_hands(batch["driving_frames"], batch["hand_keypoints"], tuple(cfg.hand_crop_size))
        crops = rearrange(crops, "b t v c h w -> (b v) t c h w")
        body_in = model.augment(batch["driving_frames"], gen())
        hand_in = rearrange(model.augment(crops, gen()), "(b v) t c h w -> b t v c h w", b=1)
    z = z.requires_grad_()
    timestep = torch.full((1,), 500.0)

    def dimo_step():
        model.zero_grad(set_to_none=True)
        model.training_losses(batch, step=0, generator=gen())["loss"].backward()

    def stock_step():
        stock.zero_grad(set_to_none=True)
        F.mse_loss(stock(dit_x, timestep, text).sample, x0).backward()

    def part(fn):
        def run():
            model.zero_grad(set_to_none=True)
            z.grad = None
            _backward(fn())
        return run

    parts = {
        "augment (body frames)": part(lambda: model.augment(batch["driving_frames"], gen())),
        "hand crops": part(lambda: crop_hands(batch["driving_frames"], batch["hand_keypoints"],
                                              tuple(cfg.hand_crop_size))[0]),
        "augment (hand crops)": part(lambda: model.augment(crops, gen())),
        "body encoder": part(lambda: model.body_encoder(body_in)),
        "hand encoder": part(lambda: model.hand_encoder(hand_in)),
        "geometric decoder": part(lambda: model.geometric_decoder(z)),
        "motion embedding": part(lambda: model.generator.embed_motion(z, x0.shape[2])),
        "generator (with motion)": part(lambda: model.generator(dit_x, timestep, text, motion_tokens=z).sample),
        "generator (motion off)": part(lambda: model.generator(dit_x, timestep, text).sample),
    }
    info = {"config": name, "frames": frames, "pixels": px, "batch_size": 1,
            "params": sum(p.numel() for p in model.parameters()),
            "stock_params": sum(p.numel() for p in stock.parameters())}
    return {"dimo": dimo_step, "stock": stock_step, "info": info}, parts


def bench_side_by_side(name: str, repeats: int, rounds: int) -> dict:
    """The whole measurement of one config: FLOPs once, then `rounds` rounds of (matmul peak, stock step,
    3DiMo step, matmul peak), each step timed as the min of `repeats`; the ratio is taken within each round (the
    same minutes of a shared machine) and its median reported."""
    steps, parts = dimo_and_stock_steps(name)
    for key in ("dimo", "stock"):
        steps[key]()  # warm-up (allocator, lazy init)
    flops = {key: count_flops(steps[key]) for key in ("dimo", "stock")}
    per_round = []
    for _ in range(rounds):
        peak = max(matmul_flops_per_s(512), matmul_flops_per_s(1024))
        t_stock = best_time(steps["stock"], repeats)
        t_dimo = best_time(steps["dimo"], repeats)
        peak = max(peak, matmul_flops_per_s(1024))
        dimo_fps, stock_fps = flops["dimo"] / t_dimo, flops["stock"] / t_stock
        per_round.append({"matmul_fp32_flops_per_s": peak, "stock_s": t_stock, "dimo_s": t_dimo,
                          "stock_flops_per_s": stock_fps, "dimo_flops_per_s": dimo_fps,
                          "stock_fraction_of_matmul": stock_fps / peak, "dimo_fraction_of_matmul": dimo_fps / peak,
                          "dimo_over_stock": dimo_fps / stock_fps})
    breakdown = []
    for label, fn in parts.items():
        fn()
        f = count_flops(fn)
        t = best_time(fn, repeats)
        breakdown.append({"part": label, "s": t, "flops": f, "flops_per_s": f / t})
    med = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    return {**steps["info"], "flops_per_step": flops["dimo"], "stock_flops_per_step": flops["stock"],
            "rounds": per_round, "median": med, "parts": breakdown}


def print_side_by_side(r: dict) -> None:
    m = r["median"]
    print(f"{r['config']}: T={r['frames']} {r['pixels']}px, median of {len(r['rounds'])} rounds "
          f"(fp32 matmul {m['matmul_fp32_flops_per_s'] / 1e9:.1f} GFLOP/s, {torch.get_num_threads()} threads, "
          f"{'CPU time' if clock is CLOCKS['cpu'] else 'wall clock'})")
    for who, key, n in (("stock Wan", "stock", r["stock_params"]), ("3DiMo", "dimo", r["params"])):
        fl = r["stock_flops_per_step" if key == "stock" else "flops_per_step"]
        print(f"  {who:9s} params={n / 1e6:6.2f}M  fwd+bwd {m[key + '_s'] * 1e3:7.1f} ms  {fl / 1e9:6.2f} GFLOP  "
              f"{m[key + '_flops_per_s'] / 1e9:6.1f} GFLOP/s = {100 * m[key + '_fraction_of_matmul']:.1f}% of matmul")
    ratios = ", ".join(f"{100 * x['dimo_over_stock']:.0f}%" for x in r["rounds"])
    print(f"  3DiMo / stock FLOP/s: {100 * m['dimo_over_stock']:.1f}% (rounds: {ratios})")
    print("  parts of the 3DiMo step (fwd+bwd each, alone):")
    for p in r["parts"]:
        print(f"    {p['part']:24s} {p['s'] * 1e3:7.1f} ms  {p['flops'] / 1e9:6.2f} GFLOP  "
              f"{p['flops_per_s'] / 1e9:6.1f} GFLOP/s")


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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="cpu: 1 thread, CPU time (see CLOCKS)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_model.json"))
    args = ap.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.clock == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    steps = [bench_side_by_side(name, args.repeats, args.rounds) for name in args.configs]
    for r in steps:
        print_side_by_side(r)
    real = [real_scale_counts(n) for n in ("wan2.1-t2v-1.3b", "wan2.1-i2v-14b")]
    for r in real:
        print(f"{r['config']}: " + ", ".join(f"{k}={v / 1e6:.1f}M" for k, v in r["params"].items()))
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "clock": args.clock, "load_average": os.getloadavg()},
              "flops": "torch.utils.flop_counter + CPU flash attention (torch's SDPA formulas), same for both",
              "train_step": steps, "real_scale_params": real}
    results_io.write(result, args.out)


if __name__ == "__main__":
    main()
