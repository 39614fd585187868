"""Diagnostic (issue 14, H1): can the toy generator learn to use a motion signal at all, and how fast?

Trains a fresh DimoModel on same-view reconstruction of the latent cache's synthetic train clips (plain Adam, one
thread, no DeepSpeed: a diagnostic, not the training loop) and measures the motion-dependence gap on held-out
reconstruction pairs every `--eval-every` steps (the study's metric, `motion_control.motion_dependence_gaps`,
mismatched drivers of other motions), and on held-out cross-view pairs (each view of a synchronised group driven by
another view: what reconstruction training alone must transfer). Token sources:

* `encoder`: the model's own body (+ hand) encoder on the driving frames (the method);
* `oracle2d`: the renderer's ground-truth 2D keypoints per frame (23 x 2, frame units) through the SMPL-control
  pose tokenizer: a motion signal that is exact by construction, so a gap that stays ~0 here says the generator
  (size, steps, loss) cannot use motion, whatever the encoder does.

    python benchmarks/diag_generator_motion.py --tokens oracle2d --config tiny --steps 1500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from scipy.spatial.transform import Rotation

from dimo.evaluation import motion_control as mc
from dimo.models import DimoModel, configs
from dimo.training.batches import collate, example


def _gt_pose_6d(gt_path: str) -> torch.Tensor:
    """The renderer's local body-bone rotations (T, 35 x 6D, root excluded as in the labels): what the geometric
    decoder would learn from perfect pseudo-labels."""
    rotvec = np.load(gt_path)["body_pose"]  # (T, bones, 3) axis-angle, local to the parent bone
    mats = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix()[..., :2]  # 6D: the first two columns
    return torch.from_numpy(mats.reshape(rotvec.shape[0], -1).astype(np.float32))


def _clip(cache: Path, row, oracle: bool, gt_pose: bool = False) -> dict:
    d = load_file(str(cache / f"{row.clip_id}.safetensors"))
    if gt_pose:  # the geometric decoder's targets from the ground truth instead of the pseudo-labels
        d["pose_targets"] = _gt_pose_6d(row.gt_path)
        d["pose_valid"] = torch.ones_like(d["pose_targets"], dtype=torch.bool)
    if oracle:  # replace the pose targets by the renderer's 2D keypoints: what the pose tokenizer reads
        gt = np.load(row.gt_path)
        kps = gt["keypoints_2d"] / gt["image_size"][::-1].astype(np.float32) * 2 - 1
        d["pose_targets"] = torch.from_numpy(kps.astype(np.float32)).flatten(1)
        d["pose_valid"] = torch.ones_like(d["pose_targets"], dtype=torch.bool)
    return d


def _gap(model, true: list[dict], other: list[dict], seed, draws) -> dict:
    """`true[i]` a pair's example, `other[i]` its mismatched driving inputs (motion_dependence_gaps)."""
    g = mc.motion_dependence_gaps(model, true, other, seed, draws)
    return mc.bootstrap_ci(g) | {"values": [round(float(v), 6) for v in g]}


def _cross_view(held_rows, held, rows, swap, load) -> tuple[list[dict], list[dict]]:
    """Held-out synchronised groups: each view driven by the group's next view (driving view != target view), and
    the same target driven by a mismatched clip (`swap`: driver id -> mismatched driver id)."""
    by_id = dict(zip(held_rows["clip_id"], held, strict=True))
    pairs = [(a, b) for _, g in held_rows.groupby("group_id") if len(g) > 1
             for a, b in zip(np.roll(g["clip_id"].to_numpy(), 1), g["clip_id"], strict=True)]
    true = [example(by_id[a], by_id[b]) for a, b in pairs]
    other = [example(load(rows[swap[a]]), by_id[b]) for a, b in pairs]
    return true, other


def _train_cross_view(train_rows) -> list[tuple[int, int]]:
    """(driving index, target index) into the train clips: every ordered pair of two views of one synchronised
    group (what stage 2/3's cross-view reproduction draws)."""
    index = {c: i for i, c in enumerate(train_rows["clip_id"])}
    return [(index[a], index[b]) for _, g in train_rows.groupby("group_id") if len(g) > 1
            for a in g["clip_id"] for b in g["clip_id"] if a != b]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("data/05_model_input/latents"))
    ap.add_argument("--table", type=Path, default=Path("data/04_feature/labelled_clip_table.parquet"))
    ap.add_argument("--tokens", choices=["encoder", "oracle2d"], default="encoder")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--variant", default="no_geo", help="for --tokens encoder (oracle2d uses smpl_control)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--generator", type=json.loads, default={},
                    help='generator overrides (JSON), e.g. {"attention_head_dim": 32}')
    ap.add_argument("--mismatch", choices=["same_person", "any"], default="same_person",
                    help="the mismatched driver: the same person's other motion (only motion changes) or any other")
    ap.add_argument("--geo-targets", choices=["labels", "gt_pose"], default="labels",
                    help="for --tokens encoder: the geometric decoder learns the pseudo-labels or the true pose")
    ap.add_argument("--no-augment", action="store_true",
                    help="for --tokens encoder: driving frames without the perspective/appearance augmentation")
    ap.add_argument("--augment", type=json.loads, default={},
                    help='for --tokens encoder: AugmentConfig overrides, e.g. \'{"perspective": 0.05, "hue": 0.02}\'')
    ap.add_argument("--cross-view-frac", type=float, default=0.0,
                    help="fraction of training examples drawn as cross-view pairs of the train split's synchronised "
                         "groups (stage 2's 0.5, stage 3's 1.0); the rest same-view reconstruction")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    oracle = args.tokens == "oracle2d"
    table = pd.read_parquet(args.table)
    table = table[table.gt_path.notna()].sort_values("clip_id")
    gt_pose = args.geo_targets == "gt_pose" and not oracle
    train_rows = table[table.split == "train"]
    train = [_clip(args.cache, r, oracle, gt_pose) for r in train_rows.itertuples()]
    held_rows = table[table.split != "train"]
    held = [_clip(args.cache, r, oracle, gt_pose) for r in held_rows.itertuples()]
    # a driver of another motion for each held-out clip, drawn as the study draws it (from all synthetic clips)
    pairs = pd.DataFrame({"driving_clip_id": held_rows["clip_id"], "motion_name": held_rows["motion_name"]})
    people = dict(zip(table["clip_id"], table["identity_id"])) if args.mismatch == "same_person" else None
    pool = dict(zip(table["clip_id"], table["motion_name"]))
    swapped = mc.mismatched_pairs(pairs, 0, pool=pool, clip_identity=people)
    rows = {r.clip_id: r for r in table.itertuples()}
    other = [_clip(args.cache, rows[c], oracle, gt_pose) for c in swapped["driving_clip_id"]]
    same_view = ([example(h, h) for h in held], [example(o, o) for o in other])
    swap = dict(zip(swapped["true_driving_clip_id"], swapped["driving_clip_id"], strict=True))
    cross_view = _cross_view(held_rows, held, rows, swap, lambda r: _clip(args.cache, r, oracle, gt_pose))

    if oracle:
        cfg = configs.get(args.config, "smpl_control", pose_tokenizer={"pose_dim": train[0]["pose_targets"].shape[1]},
                          generator=args.generator)
    else:
        decoder = {"n_body_joints": train[0]["pose_targets"].shape[1] // 6, "num_hands": 0} if gt_pose else {}
        cfg = configs.get(args.config, args.variant, generator=args.generator, geometric_decoder=decoder,
                          augment={"enabled": False} if args.no_augment else args.augment)
    model = DimoModel(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    train_pairs = _train_cross_view(train_rows)
    if args.cross_view_frac > 0 and not train_pairs:
        raise SystemExit(f"{args.table}: no synchronised group with two train views, so no cross-view training pairs")
    curve, losses, geo, t0 = [], [], [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0:
            gap = _gap(model, *same_view, args.seed, args.draws)
            cross = _gap(model, *cross_view, args.seed, args.draws)
            curve.append({"step": step, "train_loss": float(np.mean(losses[-50:])) if losses else None,
                          "geometric_loss": float(np.mean(geo[-50:])) if geo else None,
                          **{k: gap[k] for k in ("mean", "ci_low", "ci_high")},
                          **{f"cross_view_{k}": cross[k] for k in ("mean", "ci_low", "ci_high", "n")},
                          "s": round(time.perf_counter() - t0)})
            print(json.dumps(curve[-1]), flush=True)
        if step == args.steps:
            break
        idx = torch.randint(len(train), (args.batch,), generator=g).tolist()
        pairs = [(i, i) for i in idx]  # same-view reconstruction
        if args.cross_view_frac > 0:  # drawn only then: with 0 the run repeats the earlier results' random stream
            cross = torch.randint(len(train_pairs), (args.batch,), generator=g).tolist()
            use = (torch.rand(args.batch, generator=g) < args.cross_view_frac).tolist()
            pairs = [train_pairs[j] if u else p for p, j, u in zip(pairs, cross, use, strict=True)]
        batch = collate([example(train[a], train[b]) for a, b in pairs])
        out = model.training_losses(batch, step, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["diffusion_loss"].detach()))
        geo.append(float(out["geometric_loss"].detach()))
    n_params = sum(p.numel() for p in params)
    result = {**vars(args), "params": n_params, "curve": curve, "final_gap": gap, "final_cross_view_gap": cross,
              "seconds": time.perf_counter() - t0, "train_clips": len(train), "held_out_clips": len(held)}
    result = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
    tag = "-".join(f"{k}{v}" for k, v in args.generator.items())
    name = f"diag_generator_motion-{args.tokens}-{args.config}{tag and '-' + tag}.json"
    out = args.out or Path("benchmarks/results") / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("tokens", "config", "params", "seconds")}))


if __name__ == "__main__":
    main()
