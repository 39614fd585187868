"""Auxiliary geometric decoder D_g (paper Sec. 3.3): motion tokens z = [z_body; z_hand] of one frame -> pose
theta = [theta_body; theta_left_hand; theta_right_hand], root orientation excluded (view-agnostic supervision).

Default pose layout (a config): SMPL-X body without the pelvis/root = 21 joints, MANO = 15 joints per hand, each a
6D rotation (first two columns of the rotation matrix, Zhou et al. 2019: continuous, unlike axis-angle).
P = 21*6 + 2*15*6 = 306. Without a hand encoder `num_hands=0` and only the body part is predicted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class GeometricDecoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, num_tokens: int = 10, token_dim: int = 32, hidden_dim: int = 256, num_layers: int = 2,
                 n_body_joints: int = 21, n_hand_joints: int = 15, num_hands: int = 2, rot_dim: int = 6):
        super().__init__()
        layers, d = [nn.LayerNorm(num_tokens * token_dim)], num_tokens * token_dim
        for _ in range(num_layers):
            layers += [nn.Linear(d, hidden_dim), nn.GELU()]
            d = hidden_dim
        layers.append(nn.Linear(d, self.pose_dim))
        self.mlp = nn.Sequential(*layers)

    @property
    def body_dim(self) -> int:
        return self.config.n_body_joints * self.config.rot_dim

    @property
    def pose_dim(self) -> int:
        c = self.config
        return self.body_dim + c.num_hands * c.n_hand_joints * c.rot_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T, K, D) -> theta (B, T, pose_dim)."""
        return self.mlp(z.flatten(-2).to(self.dtype))

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> body (..., n_body, rot), hands (..., num_hands, n_hand, rot)."""
        c = self.config
        body = theta[..., : self.body_dim].unflatten(-1, (c.n_body_joints, c.rot_dim))
        hands = theta[..., self.body_dim:].unflatten(-1, (c.num_hands, c.n_hand_joints, c.rot_dim))
        return body, hands


def masked_pose_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """MSE over valid entries. valid: (B, T) per frame, or (B, T, P) per entry (e.g. hands not detected).
    Returns a graph-connected 0 when nothing is valid, so the step still backpropagates cleanly."""
    err = (pred.float() - target.float()) ** 2
    if valid is None:
        return err.mean()
    mask = valid.float()
    if mask.ndim == err.ndim - 1:
        mask = mask[..., None]
    mask = mask.expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)
