"""DeepMimic motion clips retargeted onto Anny, with animated hands.

DeepMimic (pybullet_data/data/motions/humanoid3d_*.txt): Y up, the character faces +X, its right is +Z; every
link of humanoid.urdf has the root's orientation at rest, with arms and legs hanging straight down (an I-pose).
Anny: Z up, faces -Y, left is +X, right is -X, A-pose rest (arms ~41 deg from vertical, elbows bent forward).

Retargeting (docs/synthesis.md): DeepMimic's per-link world rotations are mapped into Anny's world by the
change of basis C (a proper rotation, so handedness and left/right are kept), then applied to the Anny bones
*after* a per-bone rest alignment A that takes Anny's A-pose limb directions to DeepMimic's I-pose ones:
    G_bone = C Q_link C^T A_bone,   W_bone = G_bone R_bone_rest   (Anny's 'world-orient' parameterization).
Bones DeepMimic lacks (clavicles, pelvis, toes, eyes) follow their parent; spine and neck bones share the
chest / neck rotation by fractions; wrists and fingers get their own procedural animation.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

# Per-frame layout after [duration, root pos (3), root quat (4, w x y z)]: name, size (4 = quat, 1 = angle).
DM_JOINTS = (("chest", 4), ("neck", 4), ("right_hip", 4), ("right_knee", 1), ("right_ankle", 4),
             ("right_shoulder", 4), ("right_elbow", 1), ("left_hip", 4), ("left_knee", 1), ("left_ankle", 4),
             ("left_shoulder", 4), ("left_elbow", 1))
# humanoid.urdf is used with a 0.25 global scale: hip-knee 1.686184 and knee-ankle 1.63948 units.
DM_LEG_LENGTH = 0.25 * (1.686184 + 1.63948)

# DeepMimic axes -> Anny axes: forward +X -> -Y, up +Y -> +Z, right +Z -> -X (columns are the images).
C = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
assert np.isclose(np.linalg.det(C), 1.0)

ACTIONS = {  # caption action per clip
    "backflip": "does a backflip", "cartwheel": "performs a cartwheel", "crawl": "crawls on the ground",
    "dance_a": "dances", "dance_b": "dances energetically", "getup_facedown": "gets up from lying face down",
    "getup_faceup": "gets up from lying on their back", "jump": "jumps forward", "kick": "kicks",
    "punch": "throws punches", "roll": "does a forward roll", "run": "runs", "spin": "spins around",
    "spinkick": "does a spinning kick", "walk": "walks",
}

FINGERS = ("finger1", "finger2", "finger3", "finger4", "finger5")  # thumb .. little finger
HAND_MODES = ("open", "relaxed", "fist", "point", "wave")
_CURL_DEG = {  # per finger (thumb first), per segment, degrees of flexion
    "open": [[0, 0, 0]] + [[3, 3, 3]] * 4,
    "relaxed": [[10, 10, 15]] + [[20, 30, 20]] * 4,
    "fist": [[25, 35, 45]] + [[80, 95, 65]] * 4,
    "point": [[25, 35, 45], [0, 0, 0]] + [[80, 95, 65]] * 3,
}


def motions_dir() -> str:
    import pybullet_data

    return os.path.join(pybullet_data.getDataPath(), "data", "motions")


def list_motions() -> list[str]:
    """Every DeepMimic humanoid clip shipped with pybullet, by short name (walk, run, backflip, ...)."""
    files = glob.glob(os.path.join(motions_dir(), "humanoid3d_*.txt"))
    return sorted(os.path.basename(f)[len("humanoid3d_"):-4] for f in files)


def _unit(q: np.ndarray) -> np.ndarray:
    # Some clips (kick) store quaternions with norms 0.58-1.06: normalise before use.
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


@dataclass
class DMClip:
    name: str
    loop: bool
    times: np.ndarray  # (N,) seconds of each keyframe
    root_pos: np.ndarray  # (N, 3) DeepMimic world, metres
    quats: dict[str, np.ndarray]  # name -> (N, 4) x y z w (scipy order), unit; 'root' included
    angles: dict[str, np.ndarray]  # knee / elbow -> (N,) radians about the link's +Z (right) axis

    @property
    def duration(self) -> float:
        return float(self.times[-1])


@functools.cache
def load_clip(name: str) -> DMClip:
    with open(os.path.join(motions_dir(), f"humanoid3d_{name}.txt")) as f:
        raw = json.load(f)
    frames = np.asarray(raw["Frames"], dtype=np.float64)
    times = np.concatenate([[0.0], np.cumsum(frames[:-1, 0])])
    wxyz_to_xyzw = [1, 2, 3, 0]
    quats = {"root": _unit(frames[:, 4:8][:, wxyz_to_xyzw])}
    angles = {}
    col = 8
    for joint, size in DM_JOINTS:
        if size == 4:
            quats[joint] = _unit(frames[:, col:col + 4][:, wxyz_to_xyzw])
        else:
            angles[joint] = frames[:, col].copy()
        col += size
    return DMClip(name, raw.get("Loop", "none") == "wrap", times, frames[:, 1:4].copy(), quats, angles)


def _slerp(q0: np.ndarray, q1: np.ndarray, a: np.ndarray) -> np.ndarray:
    dot = np.sum(q0 * q1, -1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)  # shortest arc
    dot = np.abs(dot).clip(-1, 1)
    theta = np.arccos(dot)
    small = theta < 1e-6
    s = np.where(small, 1.0, np.sin(theta))
    w0 = np.where(small, 1 - a, np.sin((1 - a) * theta) / s)
    w1 = np.where(small, a, np.sin(a * theta) / s)
    return _unit(w0 * q0 + w1 * q1)


@dataclass
class ClipWindow:
    """A DeepMimic clip resampled to the target fps (still in DeepMimic's frame)."""
    name: str
    root_pos: np.ndarray  # (T, 3)
    rot: dict[str, np.ndarray]  # link -> (T, 3, 3) *local* rotations (root: world)
    start_s: float
    speed: float
    mirrored: bool


def sample_window(name: str, num_frames: int, fps: float, rng: np.random.Generator, mirror: bool = False,
                  max_slowdown: float = 0.7) -> ClipWindow:
    """`num_frames` frames at `fps` from a clip: looping clips wrap (root travel carried over each cycle);
    one-shot clips shorter than the window play slower (at least `max_slowdown` speed), then hold."""
    clip = load_clip(name)
    need = (num_frames - 1) / fps
    speed = 1.0
    if clip.loop:
        start = float(rng.uniform(0, clip.duration))
    elif clip.duration >= need:
        start = float(rng.uniform(0, clip.duration - need))
    else:
        start, speed = 0.0, max(max_slowdown, clip.duration / need)
    t = start + np.arange(num_frames) * speed / fps
    cycle = np.zeros(num_frames)
    if clip.loop:
        cycle = np.floor(t / clip.duration)
        t = t - cycle * clip.duration
    t = np.clip(t, 0, clip.duration)
    i = np.clip(np.searchsorted(clip.times, t, side="right") - 1, 0, len(clip.times) - 2)
    span = np.maximum(clip.times[i + 1] - clip.times[i], 1e-9)
    a = np.clip((t - clip.times[i]) / span, 0, 1)[:, None]

    travel = (clip.root_pos[-1] - clip.root_pos[0]) * np.array([1.0, 0.0, 1.0])  # horizontal only
    root = clip.root_pos[i] * (1 - a) + clip.root_pos[i + 1] * a + cycle[:, None] * travel
    quats = {k: _slerp(q[i], q[i + 1], a) for k, q in clip.quats.items()}
    angles = {k: v[i] * (1 - a[:, 0]) + v[i + 1] * a[:, 0] for k, v in clip.angles.items()}

    if mirror:  # reflect through the sagittal plane (z -> -z) and swap sides
        root = root * np.array([1.0, 1.0, -1.0])
        quats = {k: q * np.array([-1.0, -1.0, 1.0, 1.0]) for k, q in quats.items()}
        swap = lambda k: k.replace("right", "#").replace("left", "right").replace("#", "left")  # noqa: E731
        quats = {swap(k): v for k, v in quats.items()}
        angles = {swap(k): v for k, v in angles.items()}

    rot = {k: Rotation.from_quat(q).as_matrix() for k, q in quats.items()}
    for k, ang in angles.items():
        rot[k] = Rotation.from_rotvec(ang[:, None] * np.array([0.0, 0.0, 1.0])).as_matrix()
    return ClipWindow(name, root, rot, start, speed, mirror)


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking direction a to direction b."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(np.dot(a, b))
    if s < 1e-9:
        return np.eye(3)
    return Rotation.from_rotvec(axis / s * np.arctan2(s, c)).as_matrix()


def _frac(R: np.ndarray, f: float) -> np.ndarray:
    """A fraction f of rotation(s) R (same axis, f times the angle)."""
    return Rotation.from_rotvec(Rotation.from_matrix(R).as_rotvec() * f).as_matrix()


@dataclass
class HandAnimation:
    curls: np.ndarray  # (T, 2, 5, 3) radians of flexion per finger segment, hands ordered (left, right)
    wrist: np.ndarray  # (T, 2, 2) radians: flexion, radial/ulnar deviation
    modes: list[list[str]]  # per hand, the modes visited


def animate_hands(num_frames: int, fps: float, rng: np.random.Generator) -> HandAnimation:
    """Per hand a chain of poses (open, relaxed, fist, point, finger wave) held 0.4-1.0 s, blended over ~0.2 s."""
    t = np.arange(num_frames) / fps
    curls = np.zeros((num_frames, 2, 5, 3))
    wrist = np.zeros((num_frames, 2, 2))
    modes_out = []
    for hand in range(2):
        keys, modes, clock = [], [], -float(rng.uniform(0, 0.4))
        while clock < t[-1] + 1e-9 or not keys:
            mode = str(rng.choice(HAND_MODES))
            keys.append((clock, mode))
            modes.append(mode)
            clock += float(rng.uniform(0.4, 1.0))
        wave_phase = float(rng.uniform(0, 2 * np.pi))
        poses = []
        for _, mode in keys:
            if mode == "wave":  # fingers flex one after another: a travelling wave
                phase = 2 * np.pi * 1.5 * t[:, None] - np.arange(5)[None, :] * 0.9 + wave_phase
                amp = 0.5 - 0.5 * np.cos(phase)
                fist = np.deg2rad(np.array(_CURL_DEG["fist"]))
                poses.append(amp[:, :, None] * fist[None])
            else:
                poses.append(np.broadcast_to(np.deg2rad(np.array(_CURL_DEG[mode], float)), (num_frames, 5, 3)))
        starts = np.array([k[0] for k in keys])
        idx = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(keys) - 1)
        blend = np.clip((t - starts[idx]) / 0.2, 0, 1)
        blend = blend * blend * (3 - 2 * blend)  # smoothstep
        for f in range(num_frames):
            cur = poses[idx[f]][f]
            prev = poses[max(idx[f] - 1, 0)][f]
            curls[f, hand] = prev * (1 - blend[f]) + cur * blend[f]
        # Slow wrist flexion / deviation: two sinusoids with random phases, within +-25 / +-12 degrees.
        for k, amp in enumerate((np.deg2rad(25), np.deg2rad(12))):
            freq, ph = rng.uniform(0.3, 0.9), rng.uniform(0, 2 * np.pi)
            wrist[:, hand, k] = amp * np.sin(2 * np.pi * freq * t + ph)
        modes_out.append(modes)
    return HandAnimation(curls, wrist, modes_out)


class Skeleton:
    """Anny's bone names and the index groups the retargeting and the ground truth use."""

    def __init__(self, labels: list[str], parents: list[int]):
        self.labels = list(labels)
        self.parents = [int(p) for p in parents]
        self.index = {b: i for i, b in enumerate(self.labels)}
        hand = ("finger", "metacarpal")
        self.hand_bones = {s: [b for b in self.labels if b.startswith(hand) and b.endswith("." + s)]
                           for s in ("L", "R")}
        self.body_bones = [b for b in self.labels[1:]
                           if not b.startswith(hand + ("toe", "eye"))]
        # Joints for 2D/3D ground truth: the root, body and finger bone heads.
        self.joint_bones = ["root"] + self.body_bones + [b for b in self.labels if b.startswith("finger")]


@dataclass
class Posed:
    vertices: np.ndarray  # (T, V, 3) float32, Anny world (Z up), ground at z = 0
    bone_poses: np.ndarray  # (T, B, 4, 4) world poses
    local_pose: np.ndarray  # (T, B, 4, 4) Anny 'local-ref' pose parameters (model default)
    keypoints: np.ndarray  # (T, 23, 3) Anny's COCO keypoints


def _rest_alignment(h) -> dict[str, np.ndarray]:
    """Per limb bone, the rotation A taking Anny's A-pose limb to DeepMimic's straight-down I-pose: the upper
    segment first, then the lower one about its joint (unbends the elbow without twisting the forearm)."""
    down = np.array([0.0, 0.0, -1.0])
    align = {}
    for s in ("L", "R"):
        a_up = _rotation_between(h(f"lowerarm01.{s}") - h(f"upperarm01.{s}"), down)
        a_lo = _rotation_between(a_up @ (h(f"wrist.{s}") - h(f"lowerarm01.{s}")), down) @ a_up
        l_up = _rotation_between(h(f"lowerleg01.{s}") - h(f"upperleg01.{s}"), down)
        l_lo = _rotation_between(l_up @ (h(f"foot.{s}") - h(f"lowerleg01.{s}")), down) @ l_up
        align.update({f"upperarm01.{s}": a_up, f"upperarm02.{s}": a_up, f"lowerarm01.{s}": a_lo,
                      f"lowerarm02.{s}": a_lo, f"upperleg01.{s}": l_up, f"upperleg02.{s}": l_up,
                      f"lowerleg01.{s}": l_lo, f"lowerleg02.{s}": l_lo, f"foot.{s}": l_lo})
    return align


def _link_world_rotations(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """DeepMimic's per-link world rotations (T, 3, 3), composed down its kinematic tree from local ones."""
    Q = {"root": r["root"]}
    Q["chest"] = Q["root"] @ r["chest"]
    Q["neck"] = Q["chest"] @ r["neck"]
    for side in ("right", "left"):
        Q[f"{side}_hip"] = Q["root"] @ r[f"{side}_hip"]
        Q[f"{side}_knee"] = Q[f"{side}_hip"] @ r[f"{side}_knee"]
        Q[f"{side}_ankle"] = Q[f"{side}_knee"] @ r[f"{side}_ankle"]
        Q[f"{side}_shoulder"] = Q["chest"] @ r[f"{side}_shoulder"]
        Q[f"{side}_elbow"] = Q[f"{side}_shoulder"] @ r[f"{side}_elbow"]
    return Q


def _driven_bones(r: dict[str, np.ndarray], align: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """World deltas G of the Anny bones DeepMimic drives, in Anny's world: root, spine and neck (sharing the
    chest / neck rotation by fractions), and the limbs after their rest alignment."""
    Q = _link_world_rotations(r)
    to_anny = lambda M: C @ M @ C.T  # noqa: E731

    driven: dict[str, np.ndarray] = {"root": to_anny(Q["root"])}
    spine = ["spine05", "spine04", "spine03", "spine02", "spine01"]
    for k, b in enumerate(spine, start=1):
        driven[b] = to_anny(Q["root"] @ _frac(r["chest"], k / len(spine)))
    neck = ["neck01", "neck02", "neck03", "head"]
    for k, b in enumerate(neck, start=1):
        driven[b] = to_anny(Q["chest"] @ _frac(r["neck"], k / len(neck)))
    links = {"upperarm01": "shoulder", "upperarm02": "shoulder", "lowerarm01": "elbow", "lowerarm02": "elbow",
             "upperleg01": "hip", "upperleg02": "hip", "lowerleg01": "knee", "lowerleg02": "knee", "foot": "ankle"}
    for s, side in (("L", "left"), ("R", "right")):
        for bone, link in links.items():
            driven[f"{bone}.{s}"] = to_anny(Q[f"{side}_{link}"]) @ align[f"{bone}.{s}"]
    return driven


def _hand_rotations(h, heads: np.ndarray, R_rest: np.ndarray, sk: Skeleton, hands: HandAnimation
                    ) -> dict[str, np.ndarray]:
    """Local rotations (T, 3, 3) of wrists and finger segments from the hand animation, about axes of each
    hand's rest frame: along the hand, across the knuckles, palm normal (towards the palm side)."""
    local_rot: dict[str, np.ndarray] = {}
    for hand_i, s in enumerate(("L", "R")):
        along = h(f"finger3-1.{s}") - h(f"wrist.{s}")
        across = h(f"finger5-1.{s}") - h(f"finger2-1.{s}")
        palm = np.cross(along, across) * (1.0 if s == "R" else -1.0)  # mirrored hands: flip for the left
        palm /= np.linalg.norm(palm)
        across /= np.linalg.norm(across)
        wr = hands.wrist[:, hand_i]
        local_rot[f"wrist.{s}"] = (Rotation.from_rotvec(wr[:, :1] * across[None]).as_matrix()
                                   @ Rotation.from_rotvec(wr[:, 1:] * palm[None]).as_matrix())
        for f, finger in enumerate(FINGERS):
            for seg in range(3):
                b = f"{finger}-{seg + 1}.{s}"
                tip = h(f"{finger}-{seg + 2}.{s}") if seg < 2 else heads[sk.index[b]] + R_rest[sk.index[b]][:, 1]
                axis = np.cross(tip - h(b), palm)
                axis /= np.linalg.norm(axis)
                local_rot[b] = Rotation.from_rotvec(hands.curls[:, hand_i, f, seg, None] * axis[None]).as_matrix()
    return local_rot


def _world_orient_pose(sk: Skeleton, T: int, driven: dict, local_rot: dict, R_rest: np.ndarray) -> np.ndarray:
    """(T, B, 4, 4) 'world-orient' pose parameters W = G R_rest, the world deltas G in depth order: driven bones
    take theirs, others follow the parent (plus their local motion). The root translation is left at zero."""
    G = np.zeros((T, len(sk.labels), 3, 3))
    for i, b in enumerate(sk.labels):  # Anny lists parents before children
        if b in driven:
            G[:, i] = driven[b]
        else:
            G[:, i] = G[:, sk.parents[i]] if i else np.eye(3)
            if b in local_rot:
                G[:, i] = G[:, i] @ local_rot[b]
    D = np.zeros((T, len(sk.labels), 4, 4))
    D[..., :3, :3] = G @ R_rest[None]
    D[..., 3, 3] = 1.0
    return D


def _pose_anny(model, D: np.ndarray, phenotype: dict[str, float]) -> Posed:
    """Run Anny on world-orient pose parameters; ground at the clip's lowest point and the performance centred
    horizontally (cameras aim at the origin)."""
    import torch

    from dimo.synthesis import body

    with torch.no_grad():
        out = model(pose_parameters=torch.as_tensor(D, dtype=model.dtype), phenotype_kwargs=phenotype,
                    pose_parameterization="world-orient")
        verts = out["vertices"]
        shift = torch.zeros(3, dtype=verts.dtype)
        shift[2] = -verts[..., 2].min()
        shift[:2] = -out["bone_poses"][:, 0, :2, 3].mean(0)
        out["vertices"] = verts + shift
        out["bone_poses"] = out["bone_poses"].clone()
        out["bone_poses"][..., :3, 3] += shift
        local = model.get_pose_parameterization(out, "local-ref")
        kp = body.coco_regressor()(out)
    return Posed(out["vertices"].float().numpy(), out["bone_poses"].double().numpy(),
                 local.double().numpy(), kp.float().numpy())


def retarget(model, window: ClipWindow, phenotype: dict[str, float], hands: HandAnimation) -> Posed:
    """Drive Anny (with a phenotype) by a DeepMimic window and a hand animation; returns the posed sequence."""
    import torch

    sk = Skeleton(model.bone_labels, model.bone_parents)
    with torch.no_grad():
        rest = model(phenotype_kwargs=phenotype)
    R_rest = rest["rest_bone_poses"][0, :, :3, :3].double().numpy()
    heads = rest["rest_bone_heads"][0].double().numpy()
    h = lambda b: heads[sk.index[b]]  # noqa: E731

    driven = _driven_bones(window.rot, _rest_alignment(h))
    D = _world_orient_pose(sk, len(window.root_pos), driven, _hand_rotations(h, heads, R_rest, sk, hands), R_rest)
    # The root follows DeepMimic's path, scaled by the ratio of leg lengths.
    leg = sum(np.linalg.norm(h(f"{b}.L") - h(f"{a}.L")) for a, b in (("upperleg01", "lowerleg01"),
                                                                    ("lowerleg01", "foot")))
    D[:, 0, :3, 3] = (C @ window.root_pos.T).T * (leg / DM_LEG_LENGTH)
    return _pose_anny(model, D, phenotype)
