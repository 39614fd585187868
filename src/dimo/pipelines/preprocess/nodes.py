"""Encode every labelled clip once: target latents, prompt embeddings, driving frames and decoder targets.

Training reads only this cache (and never re-encodes). At real scale the codec is Wan2.1's VAE from a local
folder; at toy scale no pretrained video VAE exists here, so a tiny AutoencoderKLWan is fitted to the clips first
(on the CPU). The codec and the text encoder encode on `preprocess.device` (auto: CUDA when present); the cache
is written from CPU tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from dimo import clip_table, video_io
from dimo.inference import resolve_device
from dimo.labelling import label_format
from dimo.models import FrozenTextEncoder, LatentCodec, text_encoder, toy_codec
from dimo.training import mixtures

log = logging.getLogger(__name__)


def _video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (1, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def _clip_folders(clips: pd.DataFrame, synthetic_clips: dict | None, ingested_clips: dict | None) -> dict:
    """clip_id -> loader for the table's clips (an error naming any clip id no folder holds)."""
    loaders = clip_table.clip_loaders(synthetic_clips, ingested_clips)
    clip_table.check_clips(list(clips["clip_id"]), loaders, "synthetic_clips / ingested_clips")
    return loaders


def prepare_codec(clips: pd.DataFrame, synthetic_clips: dict | None, ingested_clips: dict | None,
                  params: dict) -> tuple[LatentCodec, dict]:
    """The video VAE: Wan's from `codec.pretrained_path`, or (toy scale) a small one fitted to the train clips
    (read through the clip folders by clip id), with its PSNR / SSIM on the test split's clips as metrics."""
    cfg = params["codec"]
    if cfg.get("pretrained_path"):
        return LatentCodec.from_pretrained(cfg["pretrained_path"]), {}

    def videos(split: str) -> list[torch.Tensor]:
        subset = clips[clips["split"] == split]
        loaders = _clip_folders(subset, synthetic_clips, ingested_clips)
        return [_video_tensor(clip_table.load_clip(loaders, c).frames) for c in subset["clip_id"]]

    codec, timing = toy_codec.timed_fit(videos("train"), cfg, params["seed"])
    test = videos("test") or videos("val")  # held-out clips; a table without a test split is scored on val
    quality = toy_codec.codec_quality(codec, test, cfg.get("toy_threads")) if test else {}
    log.info("toy codec: %d steps in %.0f s (%.0f CPU s); held-out %s", cfg["toy_steps"], timing["fit_wall_s"],
             timing["fit_cpu_s"], quality)
    named = {**{f"codec_test_{k}": v for k, v in quality.items()}, **{f"codec_{k}": v for k, v in timing.items()}}
    return codec, {k: {"value": float(v), "step": cfg["toy_steps"]} for k, v in named.items()}


def clip_entry(row, frames: np.ndarray, codec: LatentCodec, texts: FrozenTextEncoder, driving_size: int) -> dict:
    """The cache entry of one clip from its frames (all tensors; see docs/architecture.md, 'Latent cache')."""
    device = next(codec.parameters()).device
    with torch.no_grad():
        latents = codec.encode(_video_tensor(frames).to(device))[0].cpu()
        emb, mask = (t.cpu() for t in texts.encode([row.caption]))
    label = label_format.load_label(row.label_path)
    pose, pose_valid = label_format.pose_targets(label)
    hands = label["keypoints2d_hand"].copy()
    hands[..., 2] *= label["hand_valid"][..., None]  # undetected / cut-off hands: confidence 0 -> crop fallback
    wrists = label["keypoints2d_body"][:, list(label_format.MEDIAPIPE_WRISTS)].copy()
    wrists[..., 2] *= label["valid"][:, None]
    # Driving frames at the motion encoder's input size, so the cache stays small at every scale.
    h, w = video_io.target_size(frames.shape[1], frames.shape[2], driving_size**2, 8)
    scale = np.array([w / frames.shape[2], h / frames.shape[1], 1.0], dtype=np.float32)
    driving = video_io.resize_frames(frames, h, w)
    return {
        "latents": latents.float().contiguous(),
        "text_embeddings": emb[0].float(),
        "text_mask": mask[0].to(torch.uint8),
        "driving_frames": torch.from_numpy(driving).permute(0, 3, 1, 2).contiguous(),  # uint8 (T, 3, h, w)
        "hand_keypoints": torch.from_numpy(hands * scale).float(),  # (T, 2, 21, 3) in driving-frame pixels
        "wrist_keypoints": torch.from_numpy(wrists * scale).float(),  # (T, 2, 3)
        "pose_targets": torch.from_numpy(pose),  # (T, 306) 6D rotations, root excluded
        "pose_valid": torch.from_numpy(pose_valid.astype(np.float32)),  # (T, 306)
    }


def encode_clips(clips: pd.DataFrame, synthetic_clips: dict | None, ingested_clips: dict | None,
                 codec: LatentCodec, params: dict) -> tuple[dict[str, Callable], dict]:
    """Lazy cache entries (one clip read and encoded at a time while the catalog saves them) and a manifest."""
    device = resolve_device(params.get("device"))
    codec.eval().to(device)
    texts = text_encoder.from_spec(params["text_encoder"]).to(device)
    loaders = _clip_folders(clips, synthetic_clips, ingested_clips)

    def entry(row) -> Callable[[], dict]:
        return lambda: clip_entry(row, clip_table.load_clip(loaders, row.clip_id).frames, codec, texts,
                                  params["driving_size"])

    cache = {row.clip_id: entry(row) for row in clips.itertuples()}
    c, f, h, w = codec.latent_shape(int(clips["num_frames"].iloc[0]), int(clips["height"].iloc[0]),
                                    int(clips["width"].iloc[0]))
    manifest = {"clips": len(cache), "latent_shape": [c, f, h, w], "text_encoder": params["text_encoder"],
                "text_dim": texts.output_dim, "driving_size": params["driving_size"],
                "codec": params["codec"].get("pretrained_path") or "toy"}
    return cache, manifest


def build_training_pairs(clips: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The candidate pairs of every training stage, from the train split (val pairs feed the sample grids)."""
    tables = []
    for name, stage in params["stages"].items():
        for split in ("train", "val"):
            subset = clips[clips["split"] == split]
            try:
                pairs = mixtures.build_pairs(subset, {**stage, "name": name})
            except ValueError:
                if split == "train":
                    raise
                continue  # a small val split may lack a kind: sample grids then use train pairs
            tables.append(pairs.assign(stage=name, split=split))
    return pd.concat(tables, ignore_index=True)
