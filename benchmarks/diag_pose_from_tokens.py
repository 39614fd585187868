"""Diagnostic (issue 14, H1): can the motion encoder learn per-frame pose from the driving frames at all?

Trains only the body motion encoder + geometric decoder of a fresh `tiny` DimoModel on the latent cache's
pose targets (pseudo-labels) and reports held-out masked pose MSE against two baselines: the train set's mean
pose (what a decoder that ignores its tokens reaches) and each clip's own mean pose. If the held-out MSE stays at
the mean-pose level, the tokens carry no pose and the generator has nothing to follow.

    python benchmarks/diag_pose_from_tokens.py --cache data/05_model_input/latents --table \
        data/04_feature/labelled_clip_table.parquet --steps 1500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from dimo.models import DimoModel, configs
from dimo.models.geometric_decoder import masked_pose_loss

BODY = 126  # the body part of the pose targets (21 joints x 6D, root excluded): what a body-only decoder predicts


def _load(cache: Path, rows, target: str) -> list[dict]:
    """Per clip: driving frames and the target to regress. pseudo: the cached pose targets (pseudo-labels, 6D);
    gt2d: the renderer's ground-truth 2D keypoints (23 x 2, in units of the frame size, from the gt npz)."""
    out = []
    for row in rows.itertuples():
        d = load_file(str(cache / f"{row.clip_id}.safetensors"))
        frames = d["driving_frames"].float() / 127.5 - 1
        if target == "pseudo":
            pose, valid = d["pose_targets"][:, :BODY], d["pose_valid"][:, :BODY]
        else:
            import numpy as np
            gt = np.load(row.gt_path)
            pose = torch.from_numpy(gt["keypoints_2d"] / gt["image_size"][::-1].astype(np.float32) * 2 - 1)
            pose = pose.float().flatten(1)
            valid = torch.ones_like(pose)
        out.append({"frames": frames, "pose": pose, "valid": valid})
    return out


class _Regressor(torch.nn.Module):
    """The model's body encoder (with its training augmentation) + an MLP head on each frame's K tokens; the
    head is the geometric decoder for pseudo-label targets."""

    def __init__(self, dimo: DimoModel, out_dim: int):
        super().__init__()
        self.dimo = dimo
        k, d = dimo.config.body_encoder["num_latent_tokens"], dimo.config.body_encoder["token_dim"]
        self.head = torch.nn.Sequential(torch.nn.Linear(k * d, 256), torch.nn.SiLU(), torch.nn.Linear(256, out_dim))

    def forward(self, frames, generator=None):
        if self.training:
            frames = self.dimo.augment(frames, generator)
        return self.head(self.dimo.body_encoder(frames).flatten(2))


def _mse(model, clips, mean=None) -> float:
    num = den = 0.0
    with torch.no_grad():
        for c in clips:
            pred = mean.expand_as(c["pose"])[None] if mean is not None else model(c["frames"][None])
            v = c["valid"][None]
            num += float(masked_pose_loss(pred, c["pose"][None], v)) * float(v.sum())
            den += float(v.sum())
    return num / max(den, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("data/05_model_input/latents"))
    ap.add_argument("--table", type=Path, default=Path("data/04_feature/labelled_clip_table.parquet"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--target", choices=["pseudo", "gt2d"], default="pseudo")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/diag_pose_from_tokens.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    table = pd.read_parquet(args.table)
    table = table[table.gt_path.notna()]  # synthetic clips: one frame size, so batches stack
    train = _load(args.cache, table[table.split == "train"], args.target)
    held = _load(args.cache, table[table.split != "train"], args.target)
    dimo = DimoModel(configs.get("tiny", variant="no_hand")).train()
    model = _Regressor(dimo, train[0]["pose"].shape[-1])
    poses, valid = torch.cat([c["pose"] for c in train]), torch.cat([c["valid"] for c in train])
    mean = (poses * valid).sum(0) / valid.sum(0).clamp_min(1)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    g = torch.Generator().manual_seed(0)
    curve, t0 = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % max(1, args.steps // 6) == 0:
            model.eval()
            curve.append({"step": step, "held_out_mse": _mse(model, held), "train_mse": _mse(model, train[:12])})
            model.train()
            print(curve[-1], f"{time.perf_counter() - t0:.0f}s", flush=True)
        idx = torch.randint(len(train), (4,), generator=g)
        frames = torch.stack([train[i]["frames"] for i in idx])
        theta = model(frames, g)
        pose = torch.stack([train[i]["pose"] for i in idx])
        loss = masked_pose_loss(theta, pose, torch.stack([train[i]["valid"] for i in idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    result = {"target": args.target, "lr": args.lr, "baseline_mean_pose_mse": _mse(None, held, mean), "curve": curve,
              "seconds": time.perf_counter() - t0, "train_clips": len(train), "held_out_clips": len(held)}
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
