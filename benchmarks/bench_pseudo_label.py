"""Benchmark of `pseudo_label`: frames/s of the raw estimator (mediapipe pose + hands trackers) vs the whole
labelling path (decode, detection incl. the multi-person second pass, batched fitting in a worker thread,
label writing), plus accuracy on synthetic clips and detection coverage on the real carphone clip.

    python benchmarks/bench_pseudo_label.py [--clips 8] [--groups 2] [--env base]
`--groups`: whole synchronised groups added (their views fused with the known cameras; their accuracy is
reported apart as `accuracy_multi_view`).
Writes benchmarks/results/bench_pseudo_label.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dimo import video_io
from dimo.datasets import VideoDataset
from dimo.labelling import accuracy, detect, labeller, multiview
from dimo.labelling import label_format as lf
from dimo.labelling.body_models import make_backend

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=8, help="synthetic clips to use (plus carphone)")
    ap.add_argument("--groups", type=int, default=2, help="whole synchronised groups (fused) added")
    ap.add_argument("--env", default="base")
    args = ap.parse_args()
    with open(ROOT / "conf" / args.env / "parameters_pseudo_label.yml") as f:
        params = yaml.safe_load(f)["pseudo_label"]
    params["progress"] = False
    primary = ROOT / "data/03_primary/clip_table.parquet"
    if primary.is_file():
        table = pd.read_parquet(primary)
    else:  # validate has not run (or is running): the synthetic table + the ingested user clips
        parts = [ROOT / "data/01_raw/synthetic/clip_table.parquet",
                 ROOT / "data/02_intermediate/ingested/clip_table.parquet"]
        table = pd.concat([pd.read_parquet(p) for p in parts if p.is_file()], ignore_index=True)
    syn = table[table["source"] == "synthetic"]
    # Spread the chosen clips over camera azimuths.
    if len(syn):
        syn = syn.sort_values("azimuth_deg").iloc[np.linspace(0, len(syn) - 1, min(args.clips, len(syn))).astype(int)]
    user = table[table["source"] == "user"]
    multi = table[(table["source"] == "synthetic") & (table["group_size"] > 1)] if "group_size" in table else syn[:0]
    groups = list(dict.fromkeys(multi["group_id"]))[:args.groups]
    multi = multi[multi["group_id"].isin(groups)]
    syn = syn[~syn["group_id"].isin(groups)]
    clips = pd.concat([user, syn, multi], ignore_index=True)
    clips = clips[[(ROOT / p).is_file() for p in clips["path"]]]  # other stages may be rewriting their outputs
    syn, user = clips[clips["source"] == "synthetic"], clips[clips["source"] == "user"]
    rows = clips[["clip_id", "path", "fps", "num_frames"]].to_dict("records")
    for r in rows:  # loaders, as the pipeline's clip partitions give them
        r["load"] = VideoDataset(filepath=str(ROOT / r["path"])).load
    gt_files = {c: (lambda p=ROOT / p: dict(np.load(p))) for c, p in zip(multi["clip_id"], multi["gt_path"])}
    fused_ids = set(multi["clip_id"])
    multiview.attach_cameras(rows, clips, gt_files)
    frames_total = int(clips["num_frames"].sum())
    backend = make_backend(params)  # loaded once, outside both timings

    # 1) raw estimator: decoded frames -> mediapipe pose + hands (no second pass, no fitting, no IO)
    videos = [video_io.read_video(ROOT / r["path"])[0] for r in rows]
    cfg = detect.DetectConfig.from_params({**params["detect"], "second_pass_stride": 0})
    det = detect.Detector(cfg)
    t0 = time.perf_counter()
    for v in videos:
        det.detect(v)
    t_detect = time.perf_counter() - t0
    det.close()

    # 2) whole labelling path into a fresh store
    with tempfile.TemporaryDirectory() as tmp:
        store = labeller.LabelStore(tmp)
        t0 = time.perf_counter()
        out = labeller.label_clips(rows, store, params, backend=backend, progress=False)
        t_pipe = time.perf_counter() - t0
        fit_s = sum(r["fit_seconds"] for r in out)
        labels = {r["clip_id"]: lf.load_label(r["label_path"]) for r in out}

    res = {"clips": len(rows), "frames": frames_total,
           "detect_fps": frames_total / t_detect, "pipeline_fps": frames_total / t_pipe,
           "pipeline_over_detect": t_detect / t_pipe,
           "fit_ms_per_frame_worker": 1000 * fit_s / frames_total,
           "model_complexity": params["detect"]["model_complexity"]}

    # 3) accuracy against synthetic ground truth, and real-footage coverage
    per_clip, az = [], []
    syn = clips[clips["source"] == "synthetic"]
    for _, c in syn.iterrows():
        lab = labels[c["clip_id"]]
        with np.load(ROOT / c["gt_path"]) as z:
            gt = {k: z[k] for k in z.files}
        lab["fit_hand_points"] = labeller.fitted_hand_points(backend, lab)[0]
        per_clip.append(accuracy.clip_accuracy(lab, gt))
        az.append(float(c["azimuth_deg"]))
    width = float(params["accuracy"]["azimuth_bin_deg"])
    res["accuracy"] = accuracy.summarise(per_clip, az, width)
    for kind, keep in (("multi_view", True), ("single_view", False)):
        part = [i for i, c in enumerate(syn["clip_id"]) if (c in fused_ids) == keep]
        if part:
            res[f"accuracy_{kind}"] = accuracy.summarise([per_clip[i] for i in part], [az[i] for i in part], width)
    for _, c in user.iterrows():
        lab = labels[c["clip_id"]]
        res[f"coverage_{c['clip_id']}"] = {"person_detected": float(lab["person_detected"].mean()),
                                          "valid": float(lab["valid"].mean())}
    print(json.dumps(res, indent=2))
    out_path = ROOT / "benchmarks/results/bench_pseudo_label.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
