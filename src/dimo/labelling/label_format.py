"""The pseudo-label format: one .npz per clip, what the geometric decoder D_g trains on (docs/labels.md).

Written once here; every producer (the `pseudo_label` pipeline, any backend) and consumer (preprocess, the
geometric decoder's loss) goes through `make_label` / `check_label` / `save_label` / `load_label`.

Rotations are 6D (Zhou et al. 2019): the first two COLUMNS of the rotation matrix, concatenated,
`r6 = [R[:, 0]; R[:, 1]]` (continuous, unlike axis-angle, and what `GeometricDecoder(rot_dim=6)` predicts).
Both backends use the same dims: J_b = 21 body joints (root excluded), J_h = 15 finger joints per hand,
hands ordered (left, right) like the model's hand crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dimo.npz_io import load_npz, save_npz

LABEL_VERSION = 1
ROT_REPR = "rot6d"
ROT_DIM = 6
HANDS = ("left", "right")

# Anny bones whose local ('local-ref') rotations form theta_body, in an SMPL-like order (hips, spine, knees,
# ankles, neck, collars, head, shoulders, elbows, wrists). Anny's other bones (pelvis.L/R, the *02 twist bones,
# toes, metacarpals, neck02/03, eyes) stay at their rest rotation: keypoints cannot observe them.
ANNY_BODY_BONES = (
    "upperleg01.L", "upperleg01.R", "spine05", "lowerleg01.L", "lowerleg01.R", "spine04",
    "foot.L", "foot.R", "spine03", "spine02", "spine01", "neck01",
    "clavicle.L", "clavicle.R", "head", "upperarm01.L", "upperarm01.R", "lowerarm01.L", "lowerarm01.R",
    "wrist.L", "wrist.R",
)
# Finger bones per hand (MANO's 15 joints: 5 fingers x 3 segments, thumb first); add ".L" / ".R".
ANNY_HAND_BONES = tuple(f"finger{f}-{s}" for f in range(1, 6) for s in range(1, 4))
# SMPL joints 1..21 (pelvis = root excluded; SMPL's 'hand' joints 22/23 are replaced by MANO) and MANO's 15.
SMPL_BODY_JOINTS = (
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)
MANO_HAND_JOINTS = tuple(f"{f}{s}" for f in ("index", "middle", "pinky", "ring", "thumb") for s in (1, 2, 3))
BODY_JOINT_NAMES = {"anny": ANNY_BODY_BONES, "smplx": SMPL_BODY_JOINTS}
HAND_JOINT_NAMES = {"anny": ANNY_HAND_BONES, "smplx": MANO_HAND_JOINTS}
J_BODY, J_HAND = 21, 15

MEDIAPIPE_POSE = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
# pose landmark indices of the wrists (left, right), ordered like HANDS: the hand-crop fallback's centres
MEDIAPIPE_WRISTS = (MEDIAPIPE_POSE.index("left_wrist"), MEDIAPIPE_POSE.index("right_wrist"))
MEDIAPIPE_HAND = (
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip", "index_mcp", "index_pip", "index_dip",
    "index_tip", "middle_mcp", "middle_pip", "middle_dip", "middle_tip", "ring_mcp", "ring_pip", "ring_dip",
    "ring_tip", "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)
# The 23 keypoints the fitted body is evaluated on (Anny's COCO regressor order, body + feet).
FIT_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel", "right_heel",
)


def _spec(T: int) -> dict[str, tuple[tuple, type]]:
    """Per-frame arrays: key -> (shape, dtype)."""
    f32 = np.float32
    return {
        "theta_body": ((T, J_BODY, ROT_DIM), f32),
        "root_orient": ((T, ROT_DIM), f32),
        "theta_hand": ((T, 2, J_HAND, ROT_DIM), f32),
        "hand_orient": ((T, 2, ROT_DIM), f32),
        "camera_wp": ((T, 3), f32),
        "keypoints2d_body": ((T, len(MEDIAPIPE_POSE), 3), f32),
        "keypoints3d_body": ((T, len(MEDIAPIPE_POSE), 4), f32),
        "keypoints2d_hand": ((T, 2, len(MEDIAPIPE_HAND), 3), f32),
        "keypoints3d_hand": ((T, 2, len(MEDIAPIPE_HAND), 4), f32),
        "fit_keypoints3d": ((T, len(FIT_KEYPOINTS), 3), f32),
        "valid": ((T,), np.bool_),
        "hand_valid": ((T, 2), np.bool_),
        "person_detected": ((T,), np.bool_),
        "frame_confidence": ((T,), f32),
        "person_count": ((T,), np.int8),
        "blank": ((T,), np.bool_),
        "fit_error_3d_mm": ((T,), f32),
        "fit_error_2d_px": ((T,), f32),
        "hand_fit_error_mm": ((T, 2), f32),
    }


SCALAR_KEYS = {"version": np.int64, "body_model": str, "rot_repr": str, "clip_id": str, "fps": np.float64,
               "height": np.int64, "width": np.int64, "scale": np.float32, "hand_scale": np.float32}
NAME_KEYS = ("body_joint_names", "hand_joint_names")


def rot6d_from_matrix(R: torch.Tensor | np.ndarray):
    """(..., 3, 3) -> (..., 6): first column, then second column."""
    if isinstance(R, np.ndarray):
        return np.concatenate([R[..., :, 0], R[..., :, 1]], -1).astype(np.float32)
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)


def matrix_from_rot6d(r6: torch.Tensor | np.ndarray):
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt (any 6-vector with independent halves maps to a rotation)."""
    is_np = isinstance(r6, np.ndarray)
    r = torch.as_tensor(r6, dtype=torch.float64 if is_np else None)
    a, b = r[..., :3], r[..., 3:]
    x = torch.nn.functional.normalize(a, dim=-1)
    y = torch.nn.functional.normalize(b - (x * b).sum(-1, keepdim=True) * x, dim=-1)
    z = torch.linalg.cross(x, y, dim=-1)
    R = torch.stack([x, y, z], -1)
    return R.numpy().astype(np.float32) if is_np else R


def axis_angle_from_rot6d(r6):
    import roma

    is_np = isinstance(r6, np.ndarray)
    aa = roma.rotmat_to_rotvec(torch.as_tensor(matrix_from_rot6d(torch.as_tensor(r6, dtype=torch.float64))))
    return aa.numpy().astype(np.float32) if is_np else aa


def identity_rot6d(shape: tuple = ()) -> np.ndarray:
    out = np.zeros(shape + (6,), np.float32)
    out[..., 0] = 1.0
    out[..., 4] = 1.0
    return out


def make_label(num_frames: int, body_model: str, clip_id: str = "", fps: float = 0.0, height: int = 0,
               width: int = 0, **arrays: Any) -> dict[str, np.ndarray]:
    """A complete label with rest rotations, zero keypoints and everything invalid, overwritten by `arrays`."""
    T = int(num_frames)
    if body_model not in BODY_JOINT_NAMES:
        raise ValueError(f"unknown body model {body_model!r}; expected one of {sorted(BODY_JOINT_NAMES)}")
    out: dict[str, np.ndarray] = {}
    for key, (shape, dtype) in _spec(T).items():
        out[key] = np.zeros(shape, dtype)
    for key in ("theta_body", "root_orient", "theta_hand", "hand_orient"):
        out[key] = identity_rot6d(_spec(T)[key][0][:-1])
    out["person_count"][:] = -1  # -1 = not checked for a second person
    out.update(version=np.int64(LABEL_VERSION), body_model=np.str_(body_model), rot_repr=np.str_(ROT_REPR),
               clip_id=np.str_(clip_id), fps=np.float64(fps), height=np.int64(height), width=np.int64(width),
               scale=np.float32(1.0), hand_scale=np.ones(2, np.float32),
               body_joint_names=np.array(BODY_JOINT_NAMES[body_model]),
               hand_joint_names=np.array(HAND_JOINT_NAMES[body_model]))
    for key, value in arrays.items():
        if key in out and key in _spec(T):
            out[key] = np.asarray(value, dtype=_spec(T)[key][1]).reshape(_spec(T)[key][0])
        else:
            out[key] = np.asarray(value)
    return out


def check_label(label: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming the first key with a wrong shape / dtype / non-finite value."""
    missing = [k for k in list(_spec(0)) + list(SCALAR_KEYS) + list(NAME_KEYS) if k not in label]
    if missing:
        raise ValueError(f"label lacks {missing}")
    T = int(label["valid"].shape[0])
    for key, (shape, dtype) in _spec(T).items():
        arr = label[key]
        if arr.shape != shape or arr.dtype != dtype:
            raise ValueError(f"label[{key!r}]: expected {shape} {np.dtype(dtype)}, got {arr.shape} {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"label[{key!r}] has non-finite values")
    if str(label["body_model"]) not in BODY_JOINT_NAMES or str(label["rot_repr"]) != ROT_REPR:
        raise ValueError(f"label: unknown body_model/rot_repr {label['body_model']}/{label['rot_repr']}")


def pose_targets(label: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Decoder targets: theta (T, 21*6 + 2*15*6 = 306) float32 = [theta_body; theta_hand(left); theta_hand(right)]
    and a per-entry valid mask (T, 306) bool (body entries follow `valid`, hand entries `hand_valid & valid`).
    Root orientation is not part of it (view-agnostic supervision, paper Sec. 3.3)."""
    T = label["valid"].shape[0]
    body = label["theta_body"].reshape(T, -1)
    hands = label["theta_hand"].reshape(T, -1)
    v = label["valid"]
    hv = label["hand_valid"] & v[:, None]
    mask = np.concatenate([np.repeat(v[:, None], body.shape[1], 1),
                           np.repeat(hv, J_HAND * ROT_DIM, axis=1)], 1)
    return np.concatenate([body, hands], 1).astype(np.float32), mask


def save_label(path: str | Path, label: dict[str, np.ndarray]) -> Path:
    """Checked, atomic, byte-reproducible .npz (same label -> same bytes)."""
    check_label(label)
    return save_npz(path, label)


def load_label(path: str | Path) -> dict[str, np.ndarray]:
    return load_npz(path)
