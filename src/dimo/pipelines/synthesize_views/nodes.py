"""Build the embedded view-rich dataset: Anny identities x DeepMimic motions x vocabulary camera rigs.

One *performance* = one identity performing one motion window; it is filmed by a synchronised rig of
`views_per_rig` cameras (multi_view: all static / handheld static; moving_camera: vocabulary motions) or by a
single camera (single_view). Views of a performance share `group_id` (= `performance_id`).
Everything is drawn from `seed`: each performance has its own generator, so clips can be rendered lazily and
in any order with identical bytes.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from dimo import camera_vocabulary, clip_table, video_io
from dimo.datasets import Video
from dimo.synthesis import body, cameras, motion, render

log = logging.getLogger(__name__)

STATIC_KEYS = ("static", "handheld_static")


@dataclass
class Performance:
    index: int
    performance_id: str
    motion_name: str
    mirrored: bool
    identity: body.Identity
    supervision: str
    split: str
    seed: list  # generator seed of this performance

    def rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([*self.seed, stream])


def frame_size(params: dict) -> tuple[int, int]:
    """(height, width) with the target pixel area and aspect (width / height), sides multiples of 16."""
    aspect = float(params.get("aspect", 1.0))
    return video_io.target_size(1000, int(round(1000 * aspect)), int(params["target_area"]),
                                int(params.get("size_multiple", 16)))


def _quota(kinds: dict[str, float], n: int) -> list[str]:
    """n labels in proportion to the fractions (the i-th takes the kind whose share holds (i + 0.5) / n)."""
    names = [k for k, v in kinds.items() if v > 0]
    cum = np.cumsum([kinds[k] for k in names]) / sum(kinds[k] for k in names)
    return [names[int(np.searchsorted(cum, (i + 0.5) / n))] for i in range(n)]


def plan_performances(params: dict) -> list[Performance]:
    seed = int(params["seed"])
    rng = np.random.default_rng([seed, 0])
    identities = body.sample_identities(int(params["num_identities"]), seed)
    motions = params.get("motions") or motion.list_motions()
    unknown = set(motions) - set(motion.list_motions())
    if unknown:
        raise ValueError(f"synthesize_views.motions: unknown DeepMimic clips {sorted(unknown)}")
    combos = [(m, v) for m in sorted(motions) for v in range(int(params["performances_per_motion"]))]
    n = len(combos)
    kinds = _quota(params["supervision_mix"], n)
    kinds = [kinds[i] for i in rng.permutation(n)]
    order = rng.permutation(n)  # splits by performance, so a group never straddles splits
    n_test = _count(params["splits"].get("test", 0.0), n)
    n_val = _count(params["splits"].get("val", 0.0), n)
    split = np.array(["train"] * n, dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    out = []
    for i, (m, v) in enumerate(combos):
        mirrored = bool(params.get("mirror", True)) and v % 2 == 1
        out.append(Performance(i, f"syn{i:04d}_{m}", m, mirrored, identities[i % len(identities)], kinds[i],
                               str(split[i]), [seed, 1000 + i]))
    return out


def _count(fraction: float, n: int) -> int:
    if fraction <= 0:
        return 0
    return max(1, int(round(fraction * n))) if n >= 5 else 0


@functools.lru_cache(maxsize=4)
def _pose(seed: tuple, motion_name: str, mirrored: bool, phenotype: tuple, num_frames: int, fps: float):
    """The posed performance (cached: its views are rendered one after another)."""
    rng = np.random.default_rng([*seed, 1])
    window = motion.sample_window(motion_name, num_frames, fps, rng, mirror=mirrored)
    hands = motion.animate_hands(num_frames, fps, rng)
    posed = motion.retarget(body.load_model(), window, dict(phenotype), hands)
    return window, hands, posed


def pose(perf: Performance, params: dict):
    return _pose(tuple(perf.seed), perf.motion_name, perf.mirrored, tuple(perf.identity.phenotype().items()),
                 int(params["num_frames"]), float(params["fps"]))


def _camera_keys(perf: Performance, views: int, deck: list[str], rng: np.random.Generator) -> list[str]:
    if perf.supervision == "multi_view":
        return [str(rng.choice(STATIC_KEYS)) for _ in range(views)]
    n = 1 if perf.supervision == "single_view" else views
    keys = []
    for _ in range(n):
        if not deck:  # a fresh shuffled deck: every vocabulary key gets used evenly
            deck.extend(rng.permutation(camera_vocabulary.keys()).tolist())
        keys.append(deck.pop())
    if perf.supervision == "moving_camera" and all(k in STATIC_KEYS for k in keys):
        moving = [k for k in camera_vocabulary.keys() if k not in STATIC_KEYS]
        keys[-1] = str(rng.choice(moving))
    return keys


def plan_cameras(perf: Performance, posed: motion.Posed, params: dict, deck: list[str]) -> list[cameras.CameraPath]:
    rng = perf.rng(2)
    height, width = frame_size(params)
    rig = params["rig"]
    keys = _camera_keys(perf, int(params["views_per_rig"]), deck, rng)
    sk = motion.Skeleton(body.load_model().bone_labels, body.load_model().bone_parents)
    joints = posed.bone_poses[:, [sk.index[b] for b in sk.joint_bones]][..., :3, 3]
    # Framing points: a vertex subsample (the silhouette's extent) and every ground-truth joint.
    pts = np.concatenate([posed.vertices[:, ::7], joints, posed.keypoints], 1)
    flat = pts.reshape(-1, 3)
    target = 0.5 * (flat.min(0) + flat.max(0))
    base = float(rng.uniform(0, 360))
    paths = []
    for k, key in enumerate(keys):
        az = base + k * 360.0 / len(keys) + float(rng.uniform(-1, 1)) * rig["azimuth_spread_deg"]
        el = float(rng.uniform(*rig["elevation_deg"]))
        dist = float(rng.uniform(*rig["distance_m"]))
        paths.append(cameras.plan_camera(key, pts, target, az % 360.0, el, dist, int(params["num_frames"]),
                                         float(params["fps"]), width, height, rig, rng))
    return paths


def ground_truth(perf: Performance, path: cameras.CameraPath, posed: motion.Posed, window: motion.ClipWindow,
                 hands: motion.HandAnimation, params: dict) -> dict[str, np.ndarray]:
    """Per-frame ground truth of one clip (docs/synthesis.md lists the keys and shapes)."""
    model = body.load_model()
    sk = motion.Skeleton(model.bone_labels, model.bone_parents)
    joints = posed.bone_poses[:, [sk.index[b] for b in sk.joint_bones]][..., :3, 3]
    uv, cam = cameras.project(joints, path.K, path.E)
    kuv, kcam = cameras.project(posed.keypoints.astype(np.float64), path.K, path.E)
    height, width = frame_size(params)
    if not cameras.in_frame(uv, width, height).all():
        raise RuntimeError(f"{perf.performance_id}/{path.key}: a joint left the image")
    rotvec = lambda m: Rotation.from_matrix(m.reshape(-1, 3, 3)).as_rotvec().reshape(m.shape[:-2] + (3,))  # noqa: E731
    local = posed.local_pose
    body_idx = [sk.index[b] for b in sk.body_bones]
    hand_idx = [[sk.index[b] for b in sk.hand_bones[s]] for s in ("L", "R")]
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    pheno = perf.identity.phenotype()
    return {
        "fps": np.float32(params["fps"]),
        "image_size": np.array([height, width], dtype=np.int32),
        "pose_parameterization": np.array("local-ref"),
        "root_orient": f32(rotvec(local[:, 0, :3, :3])),
        "root_transl": f32(local[:, 0, :3, 3]),
        "body_pose": f32(rotvec(local[:, body_idx, :3, :3])),
        "body_bone_names": np.array(sk.body_bones),
        "hand_pose": f32(np.stack([rotvec(local[:, idx, :3, :3]) for idx in hand_idx], 1)),
        "hand_bone_names": np.array([sk.hand_bones["L"], sk.hand_bones["R"]]),
        "hand_curls": f32(hands.curls),
        "joint_names": np.array(sk.joint_bones),
        "joints_world": f32(joints),
        "joints_cam": f32(cam),
        "joints_2d": f32(uv),
        "keypoint_names": np.array(body.coco_regressor().labels),
        "keypoints_world": f32(posed.keypoints),
        "keypoints_cam": f32(kcam),
        "keypoints_2d": f32(kuv),
        "K": f32(path.K),
        "extrinsics": f32(path.E),
        "phenotype": f32([pheno[k] for k in pheno]),
        "phenotype_names": np.array(list(pheno)),
        "motion_start_s": np.float32(window.start_s),
        "motion_speed": np.float32(window.speed),
    }


def _scene(perf: Performance) -> render.Scene:
    return render.Scene.sample(perf.rng(3))


def render_clip(perf: Performance, path: cameras.CameraPath, params: dict) -> Video:
    _, _, posed = pose(perf, params)
    height, width = frame_size(params)
    rend = render.renderer(width, height, int(params.get("msaa_samples", 4)))
    frames = rend.render(posed.vertices, body.vertex_colors(perf.identity), path.K, path.E, _scene(perf),
                         shadow_xy=posed.bone_poses[:, 0, :2, 3])
    return Video(frames, float(params["fps"]))


def synthesize_views(params: dict) -> tuple[pd.DataFrame, dict[str, Callable[[], Video]], dict[str, dict]]:
    """The synthetic clip table, the clips (lazy: rendered when the catalog saves them) and the per-clip
    ground truth. Paths in the table follow params clips_dir / gt_dir (the catalog writes there)."""
    num_frames = int(params["num_frames"])
    if (num_frames - 1) % 4:
        raise ValueError(f"synthesize_views.num_frames must be 1+4k, got {num_frames}")
    height, width = frame_size(params)
    perfs = plan_performances(params)
    deck: list[str] = []
    rows, clips, gts = [], {}, {}
    for perf in perfs:
        window, hands, posed = pose(perf, params)
        paths = plan_cameras(perf, posed, params, deck)
        subject = perf.identity.describe()
        action = motion.ACTIONS.get(perf.motion_name, "performs a motion")
        for k, path in enumerate(paths):
            clip_id = f"{perf.performance_id}_v{k}"
            rel = f"{params['clips_dir']}/{clip_id}.mp4"
            cam_params = {**path.params(), "fps": float(params["fps"]), "width": width, "height": height}
            rows.append({
                "clip_id": clip_id, "path": rel, "source": "synthetic", "source_path": rel,
                "group_id": perf.performance_id, "view_id": f"cam{k}", "supervision": perf.supervision,
                "camera_motion": path.key, "camera_params": json.dumps(cam_params, sort_keys=True),
                "caption": camera_vocabulary.prompt(path.key, subject=subject, action=action),
                "split": perf.split, "fps": float(params["fps"]), "num_frames": num_frames,
                "height": height, "width": width, "start_frame": 0, "source_frames": num_frames,
                "gt_path": f"{params['gt_dir']}/{clip_id}.npz",
                # extras: what ties clips together beyond the synchronised group
                "performance_id": perf.performance_id, "motion_name": perf.motion_name,
                "mirrored": perf.mirrored, "identity_id": perf.identity.identity_id, "subject": subject,
                "action": action, "camera_index": k, "azimuth_deg": float(path.start["azimuth_deg"]),
                "elevation_deg": float(path.start["elevation_deg"]),
                "distance_m": float(path.start["distance_m"]), "focal_px": float(path.start["focal_px"]),
            })
            clips[clip_id] = functools.partial(render_clip, perf, path, params)
            gts[clip_id] = ground_truth(perf, path, posed, window, hands, params)
    table = clip_table.conform(pd.DataFrame(rows))
    log.info("synthesize_views: %d performances, %d clips (%s), %dx%d, %d frames", len(perfs), len(table),
             table["supervision"].value_counts().to_dict(), width, height, num_frames)
    return table, clips, gts


def _load(item):
    return item() if callable(item) else item


def make_previews(table: pd.DataFrame, clips: dict, params: dict):
    """A contact sheet (middle frame of up to `max_clips` clips, one group per row) and an mp4 grid
    (synchronised views of up to `grid_groups` rigs, one rig per row), for MLflow."""
    from PIL import Image

    cfg = params.get("preview", {})
    groups = [g for _, g in table.sort_values("clip_id").groupby("group_id", sort=True)]
    rigs = [g for g in groups if len(g) > 1] or groups
    sheet_rows, budget = [], int(cfg.get("max_clips", 36))
    views = int(params["views_per_rig"])
    height, width = int(table["height"].iloc[0]), int(table["width"].iloc[0])
    for g in groups:
        if budget <= 0:
            break
        tiles = []
        for clip_id in g["clip_id"][:views]:
            frames = _load(clips[clip_id]).frames
            tiles.append(frames[len(frames) // 2])
            budget -= 1
        tiles += [np.zeros((height, width, 3), np.uint8)] * (views - len(tiles))
        sheet_rows.append(np.concatenate(tiles, 1))
    sheet = Image.fromarray(np.concatenate(sheet_rows, 0))
    grid_rows = []
    for g in rigs[: int(cfg.get("grid_groups", 3))]:
        vids = [_load(clips[c]).frames for c in g["clip_id"][:views]]
        vids += [np.zeros_like(vids[0])] * (views - len(vids))
        grid_rows.append(np.concatenate(vids, 2))
    grid = Video(np.concatenate(grid_rows, 1), float(params["fps"]))
    return sheet, grid
