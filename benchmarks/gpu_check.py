"""A GPU check, ready for the day a GPU machine is available (issue 13, item 8): the real training code at the
paper's input shapes on one GPU, no downloads, within 8 minutes.

    bash benchmarks/gpu_check.sh               # one GPU: Wan2.1-1.3B's width, heads and text width, 2 layers, 81
                                               # frames at 480x832 (latents 16 x 21 x 60 x 104), 512 UMT5 tokens
    bash benchmarks/gpu_check.sh --frames 121  # the paper's longer clips (latents 16 x 31 x 60 x 104)
    bash benchmarks/gpu_check.sh --dry-run     # the same checks at tiny sizes on the CPU (CI runs it)

One line per check, `PASS|FAIL <name> <detail>` (exit status 1 if any fails), results in
benchmarks/results/gpu_check-<host>-<date>[-dry-run].json:
  stage_bf16_zero2  `run_stage` (DeepSpeed bf16, fp32 master weights, zero2.json) on a catalog-format latent cache
  kill_and_resume   SIGKILLed after its step-N/2 checkpoint, resumed to N: bit-identical to the uninterrupted run
  convert           `python -m dimo.training.convert` on the final checkpoint gives the trained weights
  device_tests      tests/test_device.py with DIMO_TEST_DEVICE=<this device>: its fake-device paths, for real
  mfu               model FLOPs of fwd+bwd (as benchmarks/bench_model.py counts) / time / measured matmul peak
  time              within budget: 8 minutes of wall time; the dry run 4 minutes of CPU time
Training runs in child processes (DeepSpeed initialises torch.distributed for good, and one is killed) under
torch's deterministic algorithms (strict): an exact resume shows only where two runs compute the same numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import yaml
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from kedro.config import OmegaConfigLoader
from kedro.io.core import AbstractDataset
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from dimo.models import DimoModel
from dimo.training.batches import PairBatches, move_batch
from dimo.training.convert import main as convert_cli
from dimo.training.loop import step_generator
from dimo.training.model_init import build_fresh, configure_for_stage
from dimo.training.nodes import run_stage

ROOT = Path(__file__).resolve().parents[1]
STAGE = "stage1"


@dataclass(frozen=True)
class Sizes:
    config: str           # dimo.models.configs name
    overrides: dict       # configs.get overrides (dicts merged one level)
    frames: int           # driving frames; latent frames = (frames - 1) / 4 + 1 (Wan's VAE)
    latent_hw: tuple      # latent height, width (480x832 / 8)
    driving_hw: tuple     # cached driving frames (preprocess.driving_size 338: ~256x448)
    text_len: int         # text tokens and text-encoder width (UMT5-XXL: 512 x 4096)
    text_dim: int
    steps: int = 4        # N: the uninterrupted run; the killed run stops after N/2
    matmul_n: int = 8192  # side of the matmul peak probe
    budget_s: int = 480   # see check_time
    timeout_s: int = 480  # wall time any one step of the check may take before it is killed


GPU = Sizes("wan2.1-t2v-1.3b", {"generator": {"num_layers": 2}}, 81, (60, 104), (256, 448), 512, 4096)
# ~2 CPU minutes, most of it importing torch and DeepSpeed in 4 processes (2 at once); see check_time
# The CPU dry run measured 143 s wall / 242 s CPU on a quiet 2-core machine (2026-12-02): its budget leaves 2x.
DRY = Sizes("tiny", {}, 17, (8, 8), (64, 64), 8, 384, matmul_n=256, budget_s=480, timeout_s=900)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    seconds: float = 0.0
    data: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name} {self.detail}"


def latent_cache(path: Path):
    """The `latent_cache` dataset of conf/base/catalog_training.yml, at `path`."""
    spec = yaml.safe_load((ROOT / "conf/base/catalog_training.yml").read_text())["latent_cache"]
    return AbstractDataset.from_config("latent_cache", {**spec, "path": str(path)})


def clip_entry(sizes: Sizes, seed: int) -> dict:
    """One cache entry as preprocess writes it (dtypes included), of random content."""
    g = torch.Generator().manual_seed(seed)
    T, (h, w) = sizes.frames, sizes.driving_hw
    hands = torch.rand(T, 2, 21, 3, generator=g)
    hands[..., 0], hands[..., 1] = hands[..., 0] * w * 0.4 + w * 0.3, hands[..., 1] * h * 0.4 + h * 0.3
    return {"latents": torch.randn(16, (T - 1) // 4 + 1, *sizes.latent_hw, generator=g),
            "text_embeddings": torch.randn(sizes.text_len, sizes.text_dim, generator=g) * 0.1,
            "text_mask": torch.ones(sizes.text_len, dtype=torch.uint8),
            "driving_frames": torch.randint(0, 256, (T, 3, h, w), generator=g, dtype=torch.uint8),
            "hand_keypoints": hands, "wrist_keypoints": hands[:, :, 0].clone(),
            "pose_targets": torch.randn(T, 306, generator=g), "pose_valid": torch.ones(T, 306)}


def stage_inputs(sizes: Sizes, work: Path, precision: str) -> dict:
    """Everything a training child needs: the paper environment's training parameters made short (this stage from
    scratch for N steps, a checkpoint at N/2, lr 1e-3 so bf16 weights visibly move), the pairs, the DeepSpeed
    ZeRO-2 config; the cache is written to `work`."""
    params = OmegaConfigLoader(conf_source=str(ROOT / "conf"), env="paper", base_env="base",
                               default_run_env="local")["parameters"]["training"]
    params.update(model={"config": sizes.config, "variant": "full", "overrides": sizes.overrides,
                         "transfer_from_other_variant": False},
                  batch={"global": 2, "micro": 1}, lr=1e-3, precision=precision, checkpoint_every=sizes.steps // 2,
                  keep_checkpoints=True, log_every=1, eval_every=0, sample_steps=0, geometric_loss_from_sweep=False)
    params["stages"][STAGE].update(init="scratch", steps=sizes.steps, mix={"reconstruction": 0.5, "cross_view": 0.5})
    params["stages"][STAGE].pop("lr", None)
    views = ("view-a", "view-b")  # two views of one motion: reconstruction and cross-view pairs
    latent_cache(work / "latents").save({clip: clip_entry(sizes, i) for i, clip in enumerate(views)})
    pairs = [{"kind": "reconstruction" if d == t else "cross_view", "driving_clip_id": d, "target_clip_id": t,
              "group_id": "g", "stage": STAGE, "split": "train"} for d in views for t in views]
    return {"params": params, "pairs": pairs, "manifest": {"text_dim": sizes.text_dim}, "cache": str(work / "latents"),
            "deepspeed_config": json.loads((ROOT / "conf/deepspeed/zero2.json").read_text())}


def train_child(work: Path, run: str) -> int:
    """`gpu_check.py --child <work> <run>`: run_stage on the job in <work>/job.json, checkpoints in
    <work>/<run>/checkpoints (a second call resumes them); writes weights.safetensors and summary.json there."""


    # strict: SDPA's flash backward, for one, is deterministic only then (warn_only keeps the fast, atomic kernel);
    # an op with no deterministic kernel raises, naming itself, in the log
    torch.use_deterministic_algorithms(True)
    job = json.loads((work / "job.json").read_text())
    params = {**job["params"], "checkpoint_dir": str(work / run / "checkpoints")}
    torch.manual_seed(0)  # the same fresh model in every run (run_stage builds it from the global RNG)
    model, summary = run_stage(STAGE, pd.DataFrame(job["pairs"]), latent_cache(Path(job["cache"])).load(), None,
                               job["manifest"], job["deepspeed_config"], params)
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(work / run / "weights.safetensors"))
    torch.manual_seed(0)
    fresh = build_fresh(params["model"], job["manifest"], params["seed"]).state_dict()
    moved = sum(not torch.equal(v, fresh[k].to(v.dtype)) for k, v in weights.items() if v.is_floating_point())
    summary.update(dtypes=sorted({str(v.dtype) for v in weights.values()}), tensors_moved=moved,
                   floating_tensors=sum(v.is_floating_point() for v in weights.values()))
    (work / run / "summary.json").write_text(json.dumps(summary, default=str))
    return 0


def child_env() -> dict:
    # cuBLAS is deterministic only with a fixed workspace; a fresh port per child for its gloo/NCCL group
    return {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"
            + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}


def start_child(work: Path, run: str) -> subprocess.Popen:
    (work / run).mkdir(exist_ok=True)
    with open(work / f"{run}.log", "a") as log:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(work), run],
                                stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT,
                                start_new_session=True)


def run_child(work: Path, run: str, timeout: float) -> tuple[int, str]:
    child = start_child(work, run)
    try:
        return child.wait(timeout), (work / f"{run}.log").read_text(errors="replace")[-1500:]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)


def kill_after_checkpoint(work: Path, run: str, step: int, timeout: float) -> tuple[int, str]:
    """Start a run and SIGKILL it (its process group) once its step-`step` checkpoint is complete (`latest` points
    at it); returns (return code, the tag `latest` points at after the kill)."""
    marker, tag = work / run / "checkpoints" / STAGE / "latest", f"step-{step:08d}"
    child, deadline = start_child(work, run), time.monotonic() + timeout
    while child.poll() is None:
        if (marker.is_file() and marker.read_text().strip() == tag) or time.monotonic() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
        time.sleep(0.01)
    return child.returncode, marker.read_text().strip() if marker.is_file() else "none"


def compare(a: dict, b: dict) -> tuple[int, float]:
    """(tensors that differ, largest absolute difference) of two state dicts with the same keys."""
    if a.keys() != b.keys():
        return len(a.keys() ^ b.keys()), math.inf
    diff = [float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])]
    return len(diff), max(diff, default=0.0)


def check_stage(work: Path, sizes: Sizes) -> Check:
    rc, log = run_child(work, "uninterrupted", sizes.timeout_s)
    if rc != 0:
        return Check("stage_bf16_zero2", False, f"training child exited {rc}: {log.strip().splitlines()[-1:]}",
                     data={"log_tail": log})
    s = json.loads((work / "uninterrupted" / "summary.json").read_text())
    last = work / "uninterrupted" / "checkpoints" / STAGE / f"step-{sizes.steps:08d}"
    shards = sorted(p.name for p in last.iterdir() if "optim_states" in p.name)
    ok = (all(math.isfinite(v) for v in s["final_losses"].values()) and s["dtypes"] == ["torch.bfloat16"]
          and s["resumed_at"] == 0 and len(shards) == 1 and s["tensors_moved"] >= 0.9 * s["floating_tensors"])
    detail = (f"{sizes.steps} steps, loss {s['final_losses']['loss']:.4f}, weights {s['dtypes']}, "
              f"{s['tensors_moved']}/{s['floating_tensors']} tensors moved, ZeRO shards {shards}, "
              f"{s['samples_per_s']:.2f} samples/s")
    return Check("stage_bf16_zero2", ok, detail, data=s)


def check_resume(work: Path, sizes: Sizes, killed: tuple[int, str]) -> Check:
    """`killed`: what `kill_after_checkpoint` returned for the run to resume. The resumed run must end with the
    uninterrupted run's bf16 weights, fp32 master weights and losses, bit for bit."""
    half = sizes.steps // 2
    rc, tag = killed
    if rc != -signal.SIGKILL or tag != f"step-{half:08d}":
        return Check("kill_and_resume", False, f"the run to kill exited {rc} with latest={tag} (wanted a SIGKILL "
                     f"right after step-{half:08d}): {(work / 'resumed.log').read_text().strip().splitlines()[-1:]}")
    rc, log = run_child(work, "resumed", sizes.timeout_s)
    if rc != 0:
        return Check("kill_and_resume", False, f"the resumed run exited {rc}: {log.strip().splitlines()[-1:]}",
                     data={"log_tail": log})
    s = json.loads((work / "resumed" / "summary.json").read_text())
    ref = json.loads((work / "uninterrupted" / "summary.json").read_text())
    n_bf16, d_bf16 = compare(load_file(work / "uninterrupted" / "weights.safetensors"),
                             load_file(work / "resumed" / "weights.safetensors"))
    # the fp32 master weights of each run's last checkpoint, merged from the ZeRO shards as the converter does
    n_fp32, d_fp32 = compare(*({k: v.clone() for k, v in get_fp32_state_dict_from_zero_checkpoint(
        str(work / run / "checkpoints" / STAGE), tag=f"step-{sizes.steps:08d}").items()}
        for run in ("uninterrupted", "resumed")))
    same_loss = s["final_losses"] == ref["final_losses"]
    ok = s["resumed_at"] == half and n_bf16 == 0 and n_fp32 == 0 and same_loss
    detail = (f"killed after step {half} (SIGKILL), resumed at step {s['resumed_at']} to {sizes.steps}: "
              f"{n_bf16} weights differ (max {d_bf16:.3g}), {n_fp32} fp32 master weights differ (max {d_fp32:.3g}), "
              f"final loss {'equal' if same_loss else 'differs'}")
    return Check("kill_and_resume", ok, detail, data={"resumed": s})


def check_convert(work: Path) -> Check:
    """The converter's command line (`python -m dimo.training.convert <ckpt> <out>`, its `main` called here: one
    import of torch less) on the uninterrupted run's final checkpoint."""
    ckpt, out_dir = work / "uninterrupted" / "checkpoints" / STAGE, work / "converted"
    try:
        convert_cli([str(ckpt), str(out_dir)])
    except SystemExit as err:  # the command's exit on a missing checkpoint
        return Check("convert", False, f"python -m dimo.training.convert exited {err.code}")
    converted = DimoModel.from_pretrained(str(out_dir)).state_dict()
    trained = load_file(work / "uninterrupted" / "weights.safetensors")
    n_diff, largest = compare({k: v.to(trained[k].dtype) if k in trained else v for k, v in converted.items()},
                              trained)
    dtypes = sorted({str(v.dtype) for v in converted.values()})
    return Check("convert", n_diff == 0, f"{len(converted)} tensors {dtypes}, {n_diff} differ from the trained "
                 f"weights when rounded to their dtype (max {largest:.3g})")


def check_device_tests(device: torch.device, sizes: Sizes, dry_run: bool) -> Check:
    """tests/test_device.py on this device (DIMO_TEST_DEVICE) instead of its fake one. The dry run leaves out the
    module's own DeepSpeed bf16 stage: stage_bf16_zero2 is that stage, at this check's sizes."""
    deselect = "deepspeed_engine" if dry_run else ""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py"]
    proc = subprocess.run(cmd + (["-k", f"not {deselect}"] if deselect else []), cwd=ROOT, capture_output=True,
                          text=True, timeout=sizes.timeout_s, env={**child_env(), "DIMO_TEST_DEVICE": device.type})
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    return Check("device_tests", proc.returncode == 0, f"DIMO_TEST_DEVICE={device.type}: {summary}"
                 + (f" (deselected: {deselect})" if deselect else ""), data={"stdout_tail": proc.stdout[-3000:]})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int, repeats: int = 10, inner: int = 5,
                dtype: torch.dtype = torch.bfloat16) -> float:
    """This machine's matmul FLOP/s in `dtype`: the best of `repeats` timings of `inner` n x n products."""
    a, b = (torch.randn(n, n, generator=torch.Generator().manual_seed(i)).to(device, dtype) for i in (0, 1))
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        times.append((time.perf_counter() - t0) / inner)
    return 2 * n**3 / min(times[1:])


def check_mfu(work: Path, sizes: Sizes, device: torch.device) -> Check:
    """One forward+backward of the check's model in bf16 on the cache's first batch: model FLOPs (counted without
    gradient checkpointing, so recompute is not counted) over the step's time as trained (checkpointing as the
    config sets it), as a fraction of the measured matmul peak: the best of bf16 and fp32 (the step keeps norms,
    RoPE and the time embedding in fp32; on a CPU without bf16 units fp32 is the faster one: 170 vs 1.3 GFLOP/s
    here), probed before and after the timed steps, so a busy moment during one probe does not lower it."""
    job = json.loads((work / "job.json").read_text())
    params = job["params"]
    torch.manual_seed(0)
    model = build_fresh(params["model"], job["manifest"], params["seed"]).to(device, torch.bfloat16).train()
    batches = PairBatches(pd.DataFrame(job["pairs"]), latent_cache(Path(job["cache"])).load(),
                          params["stages"][STAGE]["mix"], 1, params["seed"])
    batch = move_batch(batches.batch(0), device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(batch, step=0, generator=step_generator(params["seed"], 0, 0, 0))["loss"].backward()
        synchronize(device)

    peaks = {dtype: matmul_peak(device, sizes.matmul_n, dtype=dtype) for dtype in (torch.bfloat16, torch.float32)}
    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    configure_for_stage(model, params["stages"][STAGE], params)  # gradient checkpointing, as the stage trains
    step()
    times = [time.perf_counter()]
    for _ in range(3):
        step()
        times.append(time.perf_counter())
    times = [b - a for a, b in zip(times, times[1:])]
    peaks = {dtype: max(peak, matmul_peak(device, sizes.matmul_n, dtype=dtype)) for dtype, peak in peaks.items()}
    peak_dtype, peak = max(peaks.items(), key=lambda item: item[1])
    mfu = flops / min(times) / peak
    data = {"flops_per_step": flops, "step_s": times, "matmul_peak_flops_per_s": peak,
            "matmul_peak_dtype": str(peak_dtype).removeprefix("torch."), "mfu": mfu,
            "gradient_checkpointing": model.config.gradient_checkpointing}
    return Check("mfu", math.isfinite(mfu) and mfu > 0, f"{100 * mfu:.3g}% ({flops / 1e12:.3g} TFLOP per fwd+bwd "
                 f"in {min(times):.3f} s; {data['matmul_peak_dtype']} matmul peak {peak / 1e12:.3g} TFLOP/s, "
                 f"n={sizes.matmul_n})", data=data)


def check_time(sizes: Sizes, dry_run: bool, wall: float) -> Check:
    """The GPU run's budget is wall time. The dry run's is CPU time (this process and its children), which a
    shared CI machine does not stretch the way it stretches wall time."""
    cpu = sum(os.times()[:4])
    spent, kind = (cpu, "CPU") if dry_run else (wall, "wall")
    return Check("time", spent <= sizes.budget_s, f"{wall:.0f} s wall, {cpu:.0f} s CPU (budget {sizes.budget_s} s "
                 f"{kind})", data={"wall_s": wall, "cpu_s": cpu})


def timed(name: str, fn, *args) -> Check:
    t0 = time.perf_counter()
    try:
        check = fn(*args)
    except Exception as err:  # a check that crashes is a FAIL line with the reason, and the others still run
        first = (str(err).strip().splitlines() or [""])[0][:300]
        check = Check(name, False, f"{type(err).__name__}: {first}")
    check.seconds = round(time.perf_counter() - t0, 2)
    print(check.line(), flush=True)
    return check


def run_checks(work: Path, sizes: Sizes, device: torch.device, dry_run: bool) -> list[Check]:
    # The run to kill trains alongside the uninterrupted one (a thread watches for its checkpoint and kills it).
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(kill_after_checkpoint, work, "resumed", sizes.steps // 2, sizes.timeout_s)
        checks = [timed("stage_bf16_zero2", check_stage, work, sizes)]
        killed = killed.result()
    if checks[0].passed:
        checks += [timed("kill_and_resume", check_resume, work, sizes, killed), timed("convert", check_convert, work)]
    else:
        checks += [timed(n, Check, n, False, "needs stage_bf16_zero2") for n in ("kill_and_resume", "convert")]
    checks.append(timed("device_tests", check_device_tests, device, sizes, dry_run))
    checks.append(timed("mfu", check_mfu, work, sizes, device))
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (gloo, one rank)")
    ap.add_argument("--frames", type=int, choices=(81, 121), help="driving frames at real scale (default 81)")
    ap.add_argument("--torch-adam", action="store_true", help="torch's Adam, if DeepSpeed's fused one cannot build")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (cache, checkpoints, child logs)")
    ap.add_argument("--child", nargs=2, metavar=("WORK", "RUN"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return train_child(Path(args.child[0]), args.child[1])
    t0 = time.perf_counter()
    sizes = DRY if args.dry_run else Sizes(**{**asdict(GPU), "frames": args.frames or GPU.frames})
    if not args.dry_run and not torch.cuda.is_available():
        print("FAIL device no CUDA device here: run with --dry-run on a CPU machine", flush=True)
        return 1
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    job = stage_inputs(sizes, work, precision="bf16")
    if args.torch_adam:
        job["deepspeed_config"]["optimizer"]["params"]["torch_adam"] = True
    (work / "job.json").write_text(json.dumps(job))
    checks = run_checks(work, sizes, device, args.dry_run)
    checks.append(timed("time", check_time, sizes, args.dry_run, time.perf_counter() - t0))
    host, date = socket.gethostname(), datetime.date.today().isoformat()
    result = {"host": host, "date": date, "dry_run": args.dry_run, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}",
              "sizes": asdict(sizes), "passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks]}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"gpu_check-{host}-{date}{'-dry-run' if args.dry_run else ''}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {path}" + (f"; work folder kept: {work}" if args.keep else ""), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
