"""Square hand crops for the hand motion encoder, from per-frame 2D hand keypoints.

Box per (clip, frame, hand), first rule that applies wins:
  1. keypoints: >= `min_points` of the 21 hand keypoints have confidence >= `conf_threshold` -> box around them
     (side = longest extent x `box_scale`, at least `min_box_frac` of the short image side);
  2. wrist: optional body wrist keypoints (B, T, 2, 3) confident -> box of `default_box_frac` around the wrist;
  3. nearest frame of the same clip where rule 1 or 2 gave a box (short detector drop-outs keep a stable crop);
  4. frame centre, side `default_box_frac` of the short side (the hand is never seen in the clip).
`visible` reports rule 1 only, so callers can tell real hand crops from fallbacks.
Hand order is (left, right) everywhere; crops are resampled with `grid_sample` (zeros outside the frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hand_boxes(
    hand_keypoints: torch.Tensor | None,
    image_size: tuple[int, int],
    batch_shape: tuple[int, int],
    wrist_keypoints: torch.Tensor | None = None,
    conf_threshold: float = 0.3,
    min_points: int = 3,
    box_scale: float = 1.6,
    min_box_frac: float = 0.08,
    default_box_frac: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns boxes (B, T, 2, 3) as (cx, cy, side) in pixels, and visible (B, T, 2) bool."""
    H, W = image_size
    B, T = batch_shape
    short = float(min(H, W))
    device = hand_keypoints.device if hand_keypoints is not None else (
        wrist_keypoints.device if wrist_keypoints is not None else torch.device("cpu"))
    centre = torch.tensor([W / 2.0, H / 2.0], device=device)
    boxes = torch.cat([centre, centre.new_tensor([default_box_frac * short])]).expand(B, T, 2, 3).clone()
    have = torch.zeros(B, T, 2, dtype=torch.bool, device=device)
    visible = torch.zeros_like(have)

    if wrist_keypoints is not None:  # rule 2 (written first, rule 1 overwrites it)
        ok = wrist_keypoints[..., 2] >= conf_threshold
        boxes[..., :2] = torch.where(ok[..., None], wrist_keypoints[..., :2].float(), boxes[..., :2])
        have |= ok

    if hand_keypoints is not None:  # rule 1
        xy, conf = hand_keypoints[..., :2].float(), hand_keypoints[..., 2]
        valid = conf >= conf_threshold  # (B, T, 2, 21)
        lo = torch.where(valid[..., None], xy, torch.full_like(xy, float("inf"))).amin(dim=-2)
        hi = torch.where(valid[..., None], xy, torch.full_like(xy, float("-inf"))).amax(dim=-2)
        visible = valid.sum(-1) >= min_points
        side = ((hi - lo).amax(-1) * box_scale).clamp(min=min_box_frac * short)
        kp_box = torch.cat([(lo + hi) / 2, side[..., None]], dim=-1)
        boxes = torch.where(visible[..., None], kp_box, boxes)
        have |= visible

    # rule 3: copy the box of the nearest frame (in time) that has one; ties go to the earlier frame.
    t = torch.arange(T, device=device, dtype=torch.float32)
    dist = (t[:, None] - t[None, :]).abs() + 1e-3 * t[None, :]  # (T_query, T_source)
    dist = torch.where(have.permute(0, 2, 1)[:, :, None, :], dist, torch.full_like(dist, float("inf")))  # B,2,T,T
    nearest = dist.argmin(-1).permute(0, 2, 1)  # (B, T, 2)
    any_box = have.any(dim=1, keepdim=True).expand_as(have)
    borrowed = torch.gather(boxes, 1, nearest[..., None].expand(-1, -1, -1, 3))
    boxes = torch.where((~have & any_box)[..., None], borrowed, boxes)  # rule 4 = the initial centre box
    return boxes, visible


def crop_hands(
    frames: torch.Tensor,
    hand_keypoints: torch.Tensor | None,
    crop_size: tuple[int, int] = (32, 32),
    wrist_keypoints: torch.Tensor | None = None,
    **box_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """frames (B, T, 3, H, W), hand_keypoints (B, T, 2, 21, 3) pixel (x, y, conf) or None
    -> crops (B, T, 2, 3, h, w) and visible (B, T, 2)."""
    B, T, C, H, W = frames.shape
    boxes, visible = hand_boxes(hand_keypoints, (H, W), (B, T), wrist_keypoints, **box_kwargs)
    boxes = boxes.to(frames.device, torch.float32)
    # affine_grid maps the crop's [-1, 1] square to normalised input coordinates (align_corners=False).
    theta = torch.zeros(B, T, 2, 2, 3, device=frames.device)
    theta[..., 0, 0] = boxes[..., 2] / W
    theta[..., 1, 1] = boxes[..., 2] / H
    theta[..., 0, 2] = 2 * boxes[..., 0] / W - 1
    theta[..., 1, 2] = 2 * boxes[..., 1] / H - 1
    h, w = crop_size
    grid = F.affine_grid(theta.flatten(0, 2), [B * T * 2, C, h, w], align_corners=False)
    # Both hands of a frame in one (2h, w) grid over that frame: no copy of every frame per hand. Same numbers.
    crops = F.grid_sample(frames.reshape(B * T, C, H, W).float(), grid.view(B * T, 2 * h, w, 2), mode="bilinear",
                          padding_mode="zeros", align_corners=False)
    crops = crops.view(B, T, C, 2, h, w).transpose(2, 3)
    return crops.contiguous().to(frames.dtype), visible
