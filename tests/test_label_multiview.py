"""pseudo_label multi-view fusion: a known Anny pose seen by three calibrated cameras is recovered from the 2D
keypoints alone (no 3D landmarks), also with one view's left/right swapped on some frames."""

from __future__ import annotations

import numpy as np
import pytest
import roma
import torch

from dimo.labelling import fit, multiview
from dimo.labelling import label_format as lf
from dimo.synthesis.cameras import look_at


@pytest.fixture(scope="module")
def anny():
    from dimo.labelling.body_models import anny_backend

    return anny_backend()


def _poses(anny, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(2, 21, 3, generator=g) * 0.3
    t = torch.linspace(0, 1, T)[:, None, None]
    aa = (1 - t) * key[0] + t * key[1]
    for name in ("spine05", "spine04", "spine03", "spine02", "spine01", "neck01", "head", "clavicle.L",
                 "clavicle.R", "wrist.L", "wrist.R"):  # the spine and the root are partly redundant under keypoints
        aa[:, lf.ANNY_BODY_BONES.index(name)] *= 0.2
    for j, axis in anny.hinges:
        aa[:, j] = 0.6 * torch.linspace(0.5, 1.0, T)[:, None] * axis
    root = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, 0.8]) * torch.linspace(0, 1, T)[:, None])
    transl = torch.tensor([0.2, -0.1, 0.0]) + torch.linspace(0, 0.3, T)[:, None] * torch.tensor([1.0, 0.0, 0.0])
    return root, aa, transl


def _rig(T: int, azimuths=(20.0, 110.0, 230.0), f=180.0, size=192):
    K, E = np.zeros((len(azimuths), T, 3, 3)), np.zeros((len(azimuths), T, 4, 4))
    target = np.array([0.3, -0.1, 0.9])
    for v, az in enumerate(azimuths):
        a, e = np.radians(az), np.radians(15.0)
        eye = target + 4.0 * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        R = look_at(eye, target)
        E[v, :, :3, :3], E[v, :, :3, 3], E[v, :, 3, 3] = R, -R @ eye, 1.0
        K[v] = [[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]]
    return K, E


def _project(J: np.ndarray, K: np.ndarray, E: np.ndarray) -> np.ndarray:
    """J (T, k, 3) world -> (V, T, 33, 3) mediapipe-ordered pixels with visibility 1."""
    Xc = np.einsum("vtij,tkj->vtki", E[..., :3, :3], J) + E[:, :, None, :3, 3]
    uv = np.einsum("vtij,vtkj->vtki", K, Xc / Xc[..., 2:3])[..., :2]
    kp2d = np.zeros(uv.shape[:2] + (33, 3), np.float32)
    for k, src in enumerate(fit.MP_FOR_FIT):
        if src >= 0:
            kp2d[:, :, src, :2], kp2d[:, :, src, 2] = uv[:, :, k], 1.0
    return kp2d


def test_multiview_recovers_known_pose(anny):
    T = 8
    root, aa, transl = _poses(anny, T, seed=3)
    scale = 1.05
    with torch.no_grad():
        J = (anny.body_points(root, roma.rotvec_to_rotmat(aa))[:, :len(lf.FIT_KEYPOINTS)] * scale
             + transl[:, None]).numpy()
    K, E = _rig(T)
    kp2d = _project(J, K, E)
    # Side views swap left/right now and then: one view on two frames, the robust loss must shrug it off.
    swap = [fit.MP_FOR_FIT[i] for i in (5, 7, 9, 11, 13, 15)], [fit.MP_FOR_FIT[i] for i in (6, 8, 10, 12, 14, 16)]
    for t in (2, 5):
        kp2d[1, t, swap[0] + swap[1]] = kp2d[1, t, swap[1] + swap[0]]
    ok = np.ones((3, T), bool)
    r = multiview.fit_multiview(anny, kp2d, ok, K, E, fit.FitConfig(iterations=80))
    body = slice(0, 19)  # face + body + feet; the two mediapipe-less points carry no weight
    err = np.linalg.norm(r["world_points"][:, body] - J[:, body], axis=-1).mean() * 1000
    assert err < 20.0, f"fused world keypoint error {err:.1f} mm"
    assert r["fused"].all() and abs(float(r["scale"][0]) - scale) < 0.05
    # Per view, hip-centred camera-axis keypoints: the like-with-like quantity the accuracy report compares.
    Jc = np.einsum("vtij,tkj->vtki", E[..., :3, :3], J)
    Jc = Jc - 0.5 * (Jc[:, :, 11] + Jc[:, :, 12])[:, :, None]
    err_c = np.linalg.norm(r["fit_points"][:, :, body] - Jc[:, :, body], axis=-1).mean() * 1000
    assert err_c < 20.0, err_c
    root_err = np.degrees(roma.rotmat_geodesic_distance(torch.as_tensor(r["root_R"][0]),
                                                        torch.as_tensor(E[0, :, :3, :3]).float() @ root).numpy())
    assert root_err.mean() < 10.0, root_err


def test_triangulation_is_exact_on_clean_views():
    T, k = 2, 5
    rng = np.random.default_rng(0)
    X = rng.normal(size=(T, k, 3)) * 0.5 + np.array([0.0, 0.0, 1.0])
    K, E = _rig(T)
    P = K @ E[..., :3, :]
    Xc = np.einsum("vtij,tkj->vtki", E[..., :3, :3], X) + E[:, :, None, :3, 3]
    uv = np.einsum("vtij,vtkj->vtki", K, Xc / Xc[..., 2:3])[..., :2]
    w = np.ones(uv.shape[:3])
    w[2, 0, 0] = 0.0  # one point seen by two views only: still triangulated
    Xh, ok = multiview.triangulate(uv, w, P)
    assert ok.all()
    np.testing.assert_allclose(Xh, X, atol=1e-3)
    w[1, 0, 0] = 0.0  # now a single view: flagged
    assert not multiview.triangulate(uv, w, P)[1][0, 0]


def test_groups_fused_in_place_with_cameras_from_camera_params(anny):
    """The labeller's path: cameras from a calibrated capture's camera_params, one group fused in place, the
    single-view result replaced on the frames both views see; the label key follows the cameras."""
    import json

    import pandas as pd

    from dimo.labelling import detect, labeller

    T = 6
    root, aa, transl = _poses(anny, T, seed=5)
    with torch.no_grad():
        J = (anny.body_points(root, roma.rotvec_to_rotmat(aa))[:, :len(lf.FIT_KEYPOINTS)] + transl[:, None]).numpy()
    K, E = _rig(T, azimuths=(30.0, 120.0))
    kp2d = _project(J, K, E)
    table = pd.DataFrame({"clip_id": ["a", "b", "c"], "group_id": ["g", "g", "solo"], "num_frames": [T] * 3,
                          "camera_params": [json.dumps({"K": K[0, 0].tolist(), "extrinsics": E[0, 0].tolist()}),
                                            json.dumps({"K": K[1, 0].tolist(), "extrinsics": E[1, 0].tolist()}),
                                            "{}"]})
    records = table[["clip_id", "num_frames"]].to_dict("records")
    multiview.attach_cameras(records, table, None)
    assert "cameras" in records[0] and "cameras" in records[1] and "cameras" not in records[2]
    np.testing.assert_allclose(records[1]["cameras"][1], E[1])
    items, bodies = [], []
    for v in range(2):
        d = detect.Detections(pose2d=kp2d[v], pose3d=np.zeros((T, 33, 4), np.float32),
                              hand2d=np.zeros((T, 2, 21, 3), np.float32), hand3d=np.zeros((T, 2, 21, 4), np.float32),
                              person=np.ones(T, bool), hand_ok=np.zeros((T, 2), bool), extra_hands=np.zeros(T, int),
                              person_count=np.ones(T, np.int8), blank=np.zeros(T, bool), height=192, width=192)
        items.append((records[v], d, {"valid": np.ones(T, bool), "hand_valid": np.zeros((T, 2), bool)}))
        bodies.append({"body_R": np.tile(np.eye(3, dtype=np.float32), (T, 21, 1, 1)),
                       "root_R": np.tile(np.eye(3, dtype=np.float32), (T, 1, 1)),
                       "fit_points": np.zeros((T, 31, 3), np.float32), "err2d_px": np.zeros(T, np.float32),
                       "err3d_mm": np.zeros(T, np.float32), "scale": np.ones(1, np.float32)})
    assert multiview.fuse_groups(items, bodies, anny, fit.FitConfig()) == 2
    Jc = np.einsum("ij,tkj->tki", E[1, 0, :3, :3], J)
    Jc = Jc - 0.5 * (Jc[:, 11] + Jc[:, 12])[:, None]
    err = np.linalg.norm(bodies[1]["fit_points"][:, :19] - Jc[:, :19], axis=-1).mean() * 1000
    assert err < 30.0 and bodies[1]["fused"].all(), err  # two views only: a little looser than three
    key = labeller._fusion_key(records[0])
    moved = dict(records[0], cameras=(K[0], E[1]))
    assert key and labeller._fusion_key(moved) != key and labeller._fusion_key(records[2]) == b""


def test_perspective_single_view_fit_beats_weak_perspective_up_close(anny):
    """A camera 2 m away with a wide field of view: the perspective fit (focal known) explains the pixels and,
    with mediapipe-like depth noise in the 3D landmarks, recovers the body better than weak perspective."""
    T = 8
    root, aa, _ = _poses(anny, T, seed=7)
    to_cam = roma.rotvec_to_rotmat(torch.tensor([-np.pi / 2, 0.0, 0.0]))  # Anny Z-up -> camera y-down
    with torch.no_grad():
        P = anny.body_points(to_cam @ root, roma.rotvec_to_rotmat(aa))[:, :len(lf.FIT_KEYPOINTS)].numpy()
    J = P - 0.5 * (P[:, 11] + P[:, 12])[:, None]
    f, c = 150.0, 127.5
    cam = J + np.array([0.25, 0.1, 2.0])
    uv = f * cam[..., :2] / cam[..., 2:] + c
    rng = np.random.default_rng(0)
    kp3d, kp2d = np.zeros((T, 33, 4), np.float32), np.zeros((T, 33, 3), np.float32)
    for k, src in enumerate(fit.MP_FOR_FIT):
        if src >= 0:
            kp3d[:, src, :3], kp3d[:, src, 3] = J[:, k], 1.0
            kp3d[:, src, 2] += rng.normal(0, 0.08, T)  # depth is what monocular 3D gets wrong
            kp2d[:, src, :2], kp2d[:, src, 2] = uv[:, k], 1.0
    cfg = fit.FitConfig(iterations=60)
    ok = np.ones(T, bool)
    weak = fit.fit_body(anny, kp3d, kp2d, ok, image_size=(256, 256), cfg=cfg)
    persp = fit.fit_body(anny, kp3d, kp2d, ok, image_size=(256, 256), cfg=cfg, focal=np.full(T, f))
    err = {n: np.linalg.norm(r["fit_points"][:, :19] - J[:, :19], axis=-1).mean() * 1000
           for n, r in (("weak", weak), ("persp", persp))}
    assert np.median(persp["err2d_px"]) < 0.5 * np.median(weak["err2d_px"]), (persp["err2d_px"], weak["err2d_px"])
    assert err["persp"] < err["weak"], err


def test_hand_found_rate_counts_visible_hands_only():
    from dimo.labelling import accuracy

    T = 4
    names = [f"{b}.{s}" for s in "LR" for b in ["wrist", *accuracy.MP_HAND_TO_BONE.values()]]
    uv = np.full((T, len(names), 2), 10.0)
    uv[2:, :16, 0] = -5.0  # the left hand leaves the image on the last two frames
    label = lf.make_label(T, "anny", clip_id="c", fps=16, height=32, width=32)
    label["hand_valid"][:, 1] = [True, False, True, False]
    label["hand_valid"][3, 0] = True  # a detection where the truth shows no full hand does not count
    r = accuracy.hand_visibility(label, {"joints_2d": uv}, names, T)
    assert r == {"hand_visible_frames": 6, "hand_found_frames": 2}
    s = accuracy.summarise([r | {"frames": T, "valid_frames": 0, "detected_frames": 0}], [0.0], 45)
    assert s["hand_found_rate"] == 2 / 6
