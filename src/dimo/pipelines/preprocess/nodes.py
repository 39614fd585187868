"""Encode every labelled clip once: target latents, prompt embeddings, driving frames and decoder targets.

Training reads only this cache (and never re-encodes). At real scale the codec is Wan2.1's VAE from a local
folder; at toy scale no pretrained video VAE exists here, so a tiny AutoencoderKLWan is fitted to the clips first
(on the CPU). The codec, the text encoder and (Wan2.1-I2V) the CLIP image encoder encode `preprocess.batch_clips`
same-size clips at a time on `preprocess.device` (auto: CUDA when present); the cache is written from CPU tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dimo import clip_table, distributed, video_io
from dimo.inference import resolve_device
from dimo.labelling import label_format
from dimo.models import FrozenTextEncoder, LatentCodec, text_encoder, toy_codec
from dimo.training import mixtures

log = logging.getLogger(__name__)

# Bump when an entry's content changes for the same clip, label and encoders (a new field, another layout).
CACHE_VERSION = 1


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
    log.info("toy codec (%s): fitted in %.0f s (%.0f CPU s); held-out %s", cfg.get("toy_kind", "autoencoder"),
             timing["fit_wall_s"], timing["fit_cpu_s"], quality)
    named = {**{f"codec_test_{k}": v for k, v in quality.items()}, **{f"codec_{k}": v for k, v in timing.items()}}
    return codec, {k: {"value": float(v), "step": cfg["toy_steps"]} for k, v in named.items()}


class ImageEncoder:
    """Wan2.1-I2V's CLIP image encoder, as diffusers' WanImageToVideoPipeline uses it: the `image_processor`, then
    the vision tower's penultimate hidden state (B, 257, 1280 for ViT-H/14), which the generator's image
    cross-attention reads (`encoder_hidden_states_image`). `path`: the Wan I2V folder (image_encoder/,
    image_processor/) or the image_encoder folder itself."""

    def __init__(self, path: str, device: torch.device):
        from transformers import CLIPImageProcessor, CLIPVisionModel

        from dimo.weight_folders import component

        root = Path(path)
        self.model = CLIPVisionModel.from_pretrained(component(root, "image_encoder")).to(device).eval()
        processor = root / "image_processor" if (root / "image_processor").is_dir() else root
        self.processor = CLIPImageProcessor.from_pretrained(processor)
        self.device = device

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W, 3) images -> (B, N, D) float on the CPU."""
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values.to(self.device)
        return self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].float().cpu()


def _label_entry(row, frames: np.ndarray, driving_size: int) -> dict:
    """The motion side of a cache entry: driving frames at the motion encoder's size, keypoints, pose targets."""
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
        "driving_frames": torch.from_numpy(driving).permute(0, 3, 1, 2).contiguous(),  # uint8 (T, 3, h, w)
        "hand_keypoints": torch.from_numpy(hands * scale).float(),  # (T, 2, 21, 3) in driving-frame pixels
        "wrist_keypoints": torch.from_numpy(wrists * scale).float(),  # (T, 2, 3)
        "pose_targets": torch.from_numpy(pose),  # (T, 306) 6D rotations, root excluded
        "pose_valid": torch.from_numpy(pose_valid.astype(np.float32)),  # (T, 306)
    }


def batch_entries(rows: list, frames: list[np.ndarray], codec: LatentCodec, texts: FrozenTextEncoder,
                  driving_size: int, images: ImageEncoder | None = None) -> list[dict]:
    """Cache entries of same-size clips, encoded as one batch on the codec's device (see docs/architecture.md,
    'Latent cache'). `images`: also `image_embeddings` of the reference image (the first frame: the first
    target frame of any pair whose target is this clip) for I2V generators."""
    device = next(codec.parameters()).device
    with torch.no_grad():
        video = torch.cat([_video_tensor(f) for f in frames]).to(device)
        latents = codec.encode(video).cpu()
        emb, mask = (t.cpu() for t in texts.encode([r.caption for r in rows]))
    clip_images = images.encode([f[0] for f in frames]) if images is not None else None
    out = []
    for i, (row, clip_frames) in enumerate(zip(rows, frames, strict=True)):
        entry = {"latents": latents[i].float().contiguous(), "text_embeddings": emb[i].float(),
                 "text_mask": mask[i].to(torch.uint8), **_label_entry(row, clip_frames, driving_size)}
        if clip_images is not None:
            entry["image_embeddings"] = clip_images[i].contiguous()  # (N, D) CLIP penultimate states
        out.append(entry)
    return out


def _batches(clips: pd.DataFrame, size: int) -> list[list]:
    """Rows grouped into batches of at most `size` clips of one size (num_frames, height, width), in table order
    of each group's first clip."""
    groups: dict[tuple, list] = {}
    for row in clips.itertuples():
        groups.setdefault((row.num_frames, row.height, row.width), []).append(row)
    return [rows[i:i + size] for rows in groups.values() for i in range(0, len(rows), size)]


def _digest(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, dtypes, shapes, values): the codec a cache entry was encoded with."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_keys(clips: pd.DataFrame, codec: LatentCodec, params: dict) -> dict[str, str]:
    """clip id -> the key of its cache entry: the clip's content hash (its file's bytes and the label parameters,
    which fix the label), its caption, the codec's weights and the encoder settings. An entry whose stored key
    differs is stale and encoded again."""
    shared = json.dumps({"version": CACHE_VERSION, "codec": _digest(codec), "text_encoder": params["text_encoder"],
                         "image_encoder": (params.get("image_encoder") or {}).get("path"),
                         "driving_size": params["driving_size"]}, sort_keys=True, default=str)
    return {row.clip_id: hashlib.sha256(f"{shared}|{row.content_hash}|{row.caption}".encode()).hexdigest()[:32]
            for row in clips.itertuples()}


def encode_clips(clips: pd.DataFrame, synthetic_clips: dict | None, ingested_clips: dict | None,
                 codec: LatentCodec, cached: dict[str, str], params: dict) -> tuple[dict, dict]:
    """The cache entries to write and a manifest. `cached`: the key of each entry the cache folder holds now
    (`latent_cache_keys`); a clip whose entry has its current key maps to None (kept as it is), so a re-run
    after a crash or a change encodes only the missing and stale entries. The rest are lazy: encoded
    `batch_clips` at a time (same-size clips together) while the catalog saves them in order, so at most one
    batch is held in memory. Each entry carries its key (a string value: the file's header metadata)."""
    keys = cache_keys(clips, codec, params)
    todo = clips[[cached.get(c) != k for c, k in keys.items()]]
    log.info("latent cache: %d of %d clips cached, %d to encode", len(clips) - len(todo), len(clips), len(todo))
    kept: dict[str, None] = dict.fromkeys(clips.loc[~clips["clip_id"].isin(todo["clip_id"]), "clip_id"])
    device = resolve_device(params.get("device"))
    codec.eval().to(device)
    texts = text_encoder.from_spec(params["text_encoder"]).to(device)
    image_path = (params.get("image_encoder") or {}).get("path")
    images = ImageEncoder(image_path, device) if image_path else None
    loaders = _clip_folders(clips, synthetic_clips, ingested_clips)
    batches = _batches(todo, int(params.get("batch_clips", 1)))
    manifest = _manifest(clips, codec, texts, images, params)
    if distributed.runner(params, "preprocess") == "ray" and batches:  # docs/ray.md; Ray is imported only there
        from .ray_encode import ray_cache

        return {**kept, **_keyed(ray_cache(batches, loaders, codec, params), keys)}, manifest
    done: dict[str, dict] = {}

    def entry(batch: list, row) -> Callable[[], dict]:
        def load() -> dict:
            if row.clip_id not in done:
                frames = [clip_table.load_clip(loaders, r.clip_id).frames for r in batch]
                done.update(zip((r.clip_id for r in batch),
                                batch_entries(batch, frames, codec, texts, params["driving_size"], images)))
            return done.pop(row.clip_id)
        return load

    return {**kept, **_keyed({row.clip_id: entry(b, row) for b in batches for row in b}, keys)}, manifest


def _keyed(entries: dict[str, Callable[[], dict]], keys: dict[str, str]) -> dict[str, Callable[[], dict]]:
    """The lazy entries, each returning its cache key beside its tensors."""
    return {c: (lambda load=load, key=keys[c]: {**load(), "cache_key": key}) for c, load in entries.items()}


def write_latent_shards(latent_cache: dict[str, Callable[[], dict]], params: dict) -> dict:
    """The cache again as WebDataset shards and a manifest under `preprocess.shards.url` (a local folder, or any
    fsspec URL): what `training.loader.cache_shards` reads on machines that do not hold the per-clip files. Entries
    are read one at a time. Returns the manifest, kept in the catalog as the record even when the shards are remote."""
    from dimo import cache_shards

    spec = params.get("shards") or {}
    if not spec.get("url"):
        raise ValueError("parameters preprocess.shards.url is not set (conf/<env>/parameters_preprocess.yml): "
                         "the folder or fsspec URL the latent shards are written to")
    size = {"max_shard_bytes": int(spec["max_shard_bytes"])} if spec.get("max_shard_bytes") else {}
    manifest = cache_shards.write_shards(latent_cache, str(spec["url"]), **size)
    log.info("latent shards: %d clips in %d shards at %s", len(manifest["clips"]), len(manifest["shards"]),
             spec["url"])
    return manifest


def _manifest(clips: pd.DataFrame, codec: LatentCodec, texts: FrozenTextEncoder, images: ImageEncoder | None,
              params: dict) -> dict:
    c, f, h, w = codec.latent_shape(int(clips["num_frames"].iloc[0]), int(clips["height"].iloc[0]),
                                    int(clips["width"].iloc[0]))
    manifest = {"clips": len(clips), "latent_shape": [c, f, h, w], "text_encoder": params["text_encoder"],
                "text_dim": texts.output_dim, "driving_size": params["driving_size"],
                "codec": params["codec"].get("pretrained_path") or "toy"}
    if images is not None:
        manifest["image_encoder"] = params["image_encoder"]["path"]
        manifest["image_dim"] = images.model.config.hidden_size
    return manifest


def build_training_pairs(clips: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The candidate pairs of every training stage, from the train split (val pairs feed the sample grids)."""
    tables = []
    for name, stage in params["stages"].items():
        if stage is None:  # switched off in this environment (conf/paper: pretrain)
            continue
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
