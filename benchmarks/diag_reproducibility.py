"""Is a training run bit-reproducible? (issue 14: two fresh-clone studies gave different per-seed values.)

Trains the `pretrain` stage of the default configuration (the real path: `model_init.build_model`,
`PairBatches`, `loop.train_stage` on DeepSpeed) for `--steps` steps in fresh processes, each with its own torch
thread count and optional background load, and compares them step by step: the loss of every step, a hash of
every trainable tensor after the last step, and the first step whose loss differs. Data: a project folder
that holds the default chain's `data/05_model_input` and `data/06_models/codec` (`--data-root`).

    python benchmarks/diag_reproducibility.py --data-root . --steps 30 --runs 1,1,2,2,2+load
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _params(env: str) -> dict:
    from kedro.config import OmegaConfigLoader

    return OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env=env)["parameters"]["training"]


def _burn(stop) -> None:  # background load: a busy process competing for the cores
    x = 1.0
    while not stop.is_set():
        for _ in range(10**5):
            x = x * 1.0000001 % 3.0


def worker(spec: dict, out) -> None:
    import pandas as pd
    import torch

    torch.set_num_threads(spec["threads"])
    from kedro_datasets.partitions import PartitionedDataset

    from dimo.training.batches import PairBatches
    from dimo.training.loop import StageSettings, train_stage
    from dimo.training.model_init import build_model, configure_for_stage

    data, params, stage = Path(spec["data_root"]), copy.deepcopy(spec["params"]), "pretrain"
    manifest = json.loads((data / "data/05_model_input/preprocess_manifest.json").read_text())
    pairs = pd.read_parquet(data / "data/05_model_input/training_pairs.parquet")
    train = pairs[(pairs["stage"] == stage) & (pairs["split"] == "train")]
    cache = PartitionedDataset(path=str(data / "data/05_model_input/latents"),
                               dataset="dimo.datasets.SafetensorsDataset", filename_suffix=".safetensors").load()
    stage_params = params["stages"][stage]
    model = build_model(stage, params, manifest)
    configure_for_stage(model, stage_params, params)
    settings = StageSettings(name=stage, steps=spec["steps"], global_step_offset=0,
                             global_batch=params["batch"]["global"], micro_batch=params["batch"]["micro"],
                             lr=stage_params.get("lr", params["lr"]), seed=params["seed"], checkpoint_every=10**9,
                             log_every=1, eval_every=10**9, deepspeed_config=json.loads(
                                 (ROOT / "conf/deepspeed" / "zero2.json").read_text()))
    batches = PairBatches(train, cache, stage_params["mix"], params["batch"]["micro"], params["seed"])
    losses: dict[int, float] = {}
    stop = mp.get_context("fork").Event()
    burners = [mp.get_context("fork").Process(target=_burn, args=(stop,)) for _ in range(spec["load"])]
    for b in burners:
        b.start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as ckpt:
        train_stage(model, batches, settings, ckpt, on_log=lambda step, m: losses.__setitem__(step, float(m["loss"])))
    seconds = time.perf_counter() - t0
    stop.set()
    for b in burners:
        b.join()
    digest = {n: hashlib.sha256(p.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
              for n, p in model.named_parameters()}
    out.put({"threads": spec["threads"], "load": spec["load"], "seconds": seconds, "losses": losses,
             "weights": digest})


def run(spec: dict) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter per run, as a kedro run is
    q = ctx.Queue()
    p = ctx.Process(target=worker, args=(spec, q))
    p.start()
    result = q.get()
    p.join()
    return result


def compare(a: dict, b: dict) -> dict:
    steps = sorted(set(a["losses"]) & set(b["losses"]))
    first = next((s for s in steps if a["losses"][s] != b["losses"][s]), None)
    differ = [n for n in a["weights"] if a["weights"][n] != b["weights"].get(n)]
    return {"first_step_loss_differs": first, "tensors_differ": len(differ), "tensors": len(a["weights"]),
            "max_loss_diff": max(abs(a["losses"][s] - b["losses"][s]) for s in steps) if steps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(ROOT))
    ap.add_argument("--env", default="local")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--runs", default="1,1,2,2", help="thread counts; '+load' adds a busy process beside the run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/diag_reproducibility.json"))
    args = ap.parse_args()
    params = _params(args.env)
    runs = []
    for item in args.runs.split(","):
        threads, load = (int(item.split("+")[0]), 1) if "+load" in item else (int(item), 0)
        runs.append(run({"data_root": args.data_root, "params": params, "steps": args.steps, "threads": threads,
                         "load": load}))
        r = runs[-1]
        print(f"threads {threads} load {load}: {r['seconds']:.0f} s, last loss {r['losses'][max(r['losses'])]:.6f}",
              flush=True)
    pairs = {f"{i}-{j}": {"a": f"threads {runs[i]['threads']} load {runs[i]['load']}",
                          "b": f"threads {runs[j]['threads']} load {runs[j]['load']}", **compare(runs[i], runs[j])}
             for i in range(len(runs)) for j in range(i + 1, len(runs))}
    for key, c in pairs.items():
        print(key, json.dumps(c))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "runs": [{k: v for k, v in r.items() if k != "weights"}
                                                                        for r in runs], "pairs": pairs,
                                          "python": sys.version.split()[0], "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
