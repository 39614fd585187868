"""The speed-ups of the 3DiMo step (issue 13, item 7) compute what the plain code computes.

Each fast path is checked against the straightforward formulation it replaced: the same numbers bit for bit where
the change only reorganises work, float-rounding agreement where the summation order changes (encoder gradients).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dimo.models import AugmentConfig, MotionEncoder, configs, crop_hands, hand_boxes
from dimo.models.augment import random_warp, warp_frames
from dimo.models.motion_encoder import encoder_layer_forward


def test_warp_frames_equals_one_grid_sample_per_frame():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 5, 3, 24, 31, generator=g) * 2 - 1
    homography = random_warp(2, AugmentConfig(perspective=0.3), g, "cpu")
    out = warp_frames(frames, homography)
    for b in range(2):
        for t in range(5):  # the plain way: every frame sampled on its clip's grid
            ys = (torch.arange(24) + 0.5) / 24 * 2 - 1
            xs = (torch.arange(31) + 0.5) / 31 * 2 - 1
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(-1, 3) @ homography[b].T
            grid = (pts[:, :2] / pts[:, 2:].clamp_min(1e-6)).view(1, 24, 31, 2)
            ref = F.grid_sample(frames[b, t][None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            assert torch.equal(out[b, t], ref[0])
    assert not torch.allclose(out, frames, atol=1e-2)


def test_crop_hands_equals_one_grid_sample_per_hand():
    g = torch.Generator().manual_seed(1)
    B, T, H, W = 2, 3, 40, 56
    frames = torch.rand(B, T, 3, H, W, generator=g)
    kp = torch.rand(B, T, 2, 21, 3, generator=g)
    kp[..., 0] *= W
    kp[..., 1] *= H
    crops, visible = crop_hands(frames, kp, (12, 20))
    assert crops.shape == (B, T, 2, 3, 12, 20) and crops.is_contiguous()
    boxes, vis = hand_boxes(kp, (H, W), (B, T))
    assert torch.equal(visible, vis)
    for b in range(B):
        for t in range(T):
            for hand in range(2):
                cx, cy, side = boxes[b, t, hand]  # float32, as the crops compute it
                theta = torch.zeros(1, 2, 3)
                theta[0, 0, 0], theta[0, 1, 1] = side / W, side / H
                theta[0, 0, 2], theta[0, 1, 2] = 2 * cx / W - 1, 2 * cy / H - 1
                grid = F.affine_grid(theta, [1, 3, 12, 20], align_corners=False)
                ref = F.grid_sample(frames[b, t][None], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)
                assert torch.equal(crops[b, t, hand], ref[0]), (b, t, hand)


@pytest.mark.parametrize("encoder", ["body_encoder", "hand_encoder"])
def test_encoder_layer_forward_is_the_torch_layer(encoder):
    torch.manual_seed(0)
    kw = getattr(configs.get("tiny"), encoder)
    layer = MotionEncoder(**kw).transformer.layers[0].train()
    x = torch.randn(3, 11, kw["width"], requires_grad=True)
    ref, out = layer(x), encoder_layer_forward(layer, x)
    assert torch.equal(out, ref)  # the forward: bit for bit
    params = [x, *layer.parameters()]
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    g_out = torch.autograd.grad(out.square().sum(), params)
    for a, b in zip(g_out, g_ref):  # the backward: up to the summation order
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_motion_encoder_uses_torch_layers_without_grad_and_the_same_numbers_with_grad():
    torch.manual_seed(0)
    enc = MotionEncoder(**configs.get("tiny").hand_encoder).train()
    frames = torch.rand(1, 3, 2, 3, 32, 32) * 2 - 1
    with_grad = enc(frames)
    with torch.no_grad():
        without = enc(frames)
    assert torch.equal(with_grad, without)
    enc.enable_gradient_checkpointing()
    assert torch.equal(enc(frames), with_grad)
