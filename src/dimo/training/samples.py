"""Sample grids for MLflow: reference | driving | generated | target, one row of frames per time step."""

from __future__ import annotations

import numpy as np
import torch

from dimo import video_io
from dimo.training.batches import move_batch


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


@torch.no_grad()
def sample_grid(model, codec, example: dict, num_steps: int, seed: int = 0) -> np.ndarray:
    """Generate the target of one (driving, target) example and lay out the four videos side by side."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = move_batch({k: v[None] for k, v in example.items()}, device)  # the model may sit on a GPU
    z = model.encode_motion(batch["driving_frames"], batch["hand_keypoints"], batch["wrist_keypoints"],
                            batch["pose_targets"])
    latents = model.sample_latents(batch["reference_latents"], z, batch["text_embeddings"], batch["text_mask"],
                                   latent_shape=tuple(batch["target_latents"].shape), num_steps=num_steps,
                                   guidance_text=1.0, guidance_motion=1.0,
                                   generator=torch.Generator().manual_seed(seed))
    codec_device = next(codec.parameters()).device
    generated = _to_uint8(codec.decode(latents.to(codec_device))[0])
    target = _to_uint8(codec.decode(batch["target_latents"].to(codec_device))[0])
    T, H, W, _ = target.shape
    reference = np.repeat(target[:1], T, axis=0)
    driving = _to_uint8(batch["driving_frames"][0].permute(1, 0, 2, 3))
    driving = video_io.resize_frames(driving, H, W)
    model.train(was_training)
    return np.concatenate([reference, driving, generated, target], axis=2)
