"""Multi-view fusion with known cameras: one body per frame fitted to every synchronised view's 2D keypoints.

Cameras are OpenCV pinholes per view and frame: K (V, T, 3, 3) pixels, E (V, T, 4, 4) world -> camera (x right,
y down, z forward). The body lives in the rig's world: per frame a root rotation, a root translation and the 21
local joint rotations, one scale per group. Objective: the confidence-weighted reprojection error summed over
views (robust, since side views swap left/right now and then), a pull towards the DLT-triangulated keypoints
(which also gives the closed-form start), and the single-view fit's prior, hinge and smoothness terms.
Per view the result is expressed like a single-view label: root rotation in that camera's axes, hip-centred
keypoints in camera axes.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import roma
import torch

from dimo.labelling import fit as fitting
from dimo.labelling import label_format as lf

L_HIP, R_HIP, L_SH, R_SH = fitting.L_HIP, fitting.R_HIP, fitting.L_SH, fitting.R_SH


def triangulate(uv: np.ndarray, w: np.ndarray, P: np.ndarray, min_views: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Weighted linear (DLT) triangulation. uv (V, T, K, 2) px, w (V, T, K) confidence, P (V, T, 3, 4) = K [R|t].
    Returns X (T, K, 3) world points and ok (T, K): at least `min_views` views with weight > 0."""
    rows_u = uv[..., 0:1] * P[:, :, None, 2] - P[:, :, None, 0]  # (V, T, K, 4)
    rows_v = uv[..., 1:2] * P[:, :, None, 2] - P[:, :, None, 1]
    A = np.concatenate([rows_u, rows_v], 0) * np.concatenate([w, w], 0)[..., None]  # (2V, T, K, 4)
    A = np.moveaxis(A, 0, 2)  # (T, K, 2V, 4)
    A = A / np.linalg.norm(A, axis=-1, keepdims=True).clip(1e-9)
    _, _, Vt = np.linalg.svd(A)
    Xh = Vt[..., -1, :]
    X = Xh[..., :3] / np.where(np.abs(Xh[..., 3:]) < 1e-9, 1e-9, Xh[..., 3:])
    ok = (w > 0).sum(0) >= min_views
    return X.astype(np.float32), ok


# Left/right partners among the fit keypoints (face, arms, legs, feet): what a side view's swap exchanges.
LR_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20), (21, 22)]


def _swap_index(pairs) -> np.ndarray:
    idx = np.arange(len(lf.FIT_KEYPOINTS))
    for a, b in pairs:
        idx[a], idx[b] = b, a
    return idx


# Candidate flips: the whole body, the legs only, the arms only (mediapipe flips them separately too).
SWAPS = [_swap_index(LR_PAIRS), _swap_index(LR_PAIRS[6:]), _swap_index(LR_PAIRS[2:5])]


def _residual(uv: np.ndarray, w: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Per frame (T,): weighted mean reprojection error (px) of the DLT triangulation of all views."""
    X, _ = triangulate(uv, w, P)
    Xh = np.concatenate([X, np.ones(X.shape[:-1] + (1,), X.dtype)], -1)
    p = np.einsum("vtij,tkj->vtki", P, Xh)
    e = np.linalg.norm(p[..., :2] / np.where(np.abs(p[..., 2:]) < 1e-9, 1e-9, p[..., 2:]) - uv, axis=-1)
    return (w * e).sum((0, 2)) / np.maximum(w.sum((0, 2)), 1e-9)


def fix_swaps(uv: np.ndarray, w: np.ndarray, P: np.ndarray, rounds: int = 2):
    """Undo per-view left/right swaps (mediapipe's side-view failure): greedily, per view and frame, keep the
    swapped keypoints when they make the views agree better. Returns uv, w and the swap mask (V, T)."""
    uv, w = uv.copy(), w.copy()
    swapped = np.zeros(uv.shape[:2], bool)
    if len(uv) < 2:
        return uv, w, swapped
    for _ in range(rounds):
        changed = False
        for v in range(len(uv)):
            for sw in SWAPS:
                base = _residual(uv, w, P)
                uv2, w2 = uv.copy(), w.copy()
                uv2[v], w2[v] = uv[v][:, sw], w[v][:, sw]
                better = _residual(uv2, w2, P) < 0.7 * base
                if better.any():
                    uv[v, better], w[v, better] = uv2[v, better], w2[v, better]
                    swapped[v, better] ^= True
                    changed = True
        if not changed:
            break
    return uv, w, swapped


def _reproject(X: np.ndarray, P: np.ndarray) -> np.ndarray:
    """X (T, K, 3) world -> (V, T, K, 2) pixels."""
    Xh = np.concatenate([X, np.ones(X.shape[:-1] + (1,), X.dtype)], -1)
    p = np.einsum("vtij,tkj->vtki", P, Xh)
    return p[..., :2] / np.where(np.abs(p[..., 2:]) < 1e-9, 1e-9, p[..., 2:])


def robust_triangulate(uv: np.ndarray, w: np.ndarray, P: np.ndarray, thr_px: np.ndarray):
    """Per keypoint, the view subset (>= 2 views) whose triangulation explains the most views (truncated
    quadratic reprojection cost, threshold thr_px (V, T)); views it does not explain are outliers (a wrong or
    swapped detection in one view). Returns X (T, K, 3), ok (T, K) and the inlier weights (V, T, K)."""
    V = len(uv)
    best_X, best_cost = None, None
    for n in range(V, 1, -1):
        for sub in itertools.combinations(range(V), n):
            ws = np.zeros_like(w)
            ws[list(sub)] = w[list(sub)]
            X, ok = triangulate(uv, ws, P)
            e = np.linalg.norm(_reproject(X, P) - uv, axis=-1) / thr_px[..., None]
            cost = (w * np.minimum(e, 1.0) ** 2 + (w == 0)).sum(0) + 1e6 * ~ok  # a subset must see the point
            if best_cost is None:
                best_X, best_cost = X, cost
            else:
                better = cost < best_cost - 1e-9
                best_X = np.where(better[..., None], X, best_X)
                best_cost = np.minimum(cost, best_cost)
    e = np.linalg.norm(_reproject(best_X, P) - uv, axis=-1) / thr_px[..., None]
    w_in = np.where(e < 1.0, w, 0.0)
    ok = (w_in > 0).sum(0) >= 2
    return best_X, ok, w_in


def _targets(kp2d: np.ndarray, frame_ok: np.ndarray, cfg: fitting.FitConfig):
    """Per view the fit keypoints' pixels (V, T, K, 2) and weights (V, T, K) (visibility x trust x frame ok)."""
    have = fitting.MP_FOR_FIT >= 0
    src = np.where(have, fitting.MP_FOR_FIT, 0)
    uv = kp2d[:, :, src, :2].astype(np.float64)
    vis = kp2d[:, :, src, 2]
    w = np.where(vis >= cfg.min_visibility, vis, 0.0) * fitting.FIT_WEIGHTS * have * frame_ok[..., None]
    return uv, w


def _init(backend, X: np.ndarray, ok: np.ndarray, dt):
    """Closed-form start from the triangulated keypoints: root rotation (torso frames, Kabsch), root translation
    (mid-hip), scale (torso + limb lengths), rest joints."""
    T = len(X)
    Xt = torch.as_tensor(X, dtype=dt)
    with torch.no_grad():
        rest = backend.body_points(torch.eye(3, dtype=dt)[None], torch.eye(3, dtype=dt).expand(1, 21, 3, 3))[0]
    K = len(lf.FIT_KEYPOINTS)
    hip_rest = 0.5 * (rest[L_HIP] + rest[R_HIP])
    torso = ok[:, [L_HIP, R_HIP, L_SH, R_SH]].all(1)
    fill = torch.as_tensor(fitting._fill_nearest(torso))
    F_rest = fitting._frame(rest[L_HIP] - rest[R_HIP], 0.5 * (rest[L_SH] + rest[R_SH]) - hip_rest)
    hip = 0.5 * (Xt[:, L_HIP] + Xt[:, R_HIP])
    F_obs = fitting._frame(Xt[:, L_HIP] - Xt[:, R_HIP], 0.5 * (Xt[:, L_SH] + Xt[:, R_SH]) - hip)
    R0 = (F_obs @ F_rest.T)[fill]
    segs = [(L_HIP, L_SH), (R_HIP, R_SH), (L_SH, 7), (R_SH, 8), (L_HIP, 13), (R_HIP, 14)]
    seg_ok = np.stack([ok[:, a] & ok[:, b] for a, b in segs], 1)
    obs = torch.stack([(Xt[:, a] - Xt[:, b]).norm(dim=-1) for a, b in segs], 1)
    ref = torch.stack([(rest[a] - rest[b]).norm() for a, b in segs])
    ratio = (obs / ref)[torch.as_tensor(seg_ok)]
    s0 = float(ratio.median()) if len(ratio) else 1.0
    transl = (hip - s0 * (R0 @ hip_rest))[fill]
    root6 = lf.rot6d_from_matrix(R0).clone().requires_grad_(True)
    aa = torch.zeros(T, 21, 3, dtype=dt, requires_grad=True)
    log_s = torch.tensor([np.log(max(s0, 1e-3))], dtype=dt, requires_grad=True)
    return root6, aa, transl.clone().requires_grad_(True), log_s, K


def _loss(backend, cfg, uv, w, Kmat, E, Xtri, tri_ok, root6, aa, transl, log_s, K):
    """Closure -> (loss, world keypoints J (T, K, 3))."""
    dt = backend.dtype
    uv_t, w_t = torch.as_tensor(uv, dtype=dt), torch.as_tensor(w, dtype=dt)
    Kt, Rc, tc = (torch.as_tensor(a, dtype=dt) for a in (Kmat, E[..., :3, :3], E[..., :3, 3]))
    f = Kt[..., 0, 0][..., None]  # (V, T, 1): residuals in focal-normalised units
    Xt = torch.as_tensor(Xtri, dtype=dt)
    wt = torch.as_tensor(tri_ok * fitting.FIT_WEIGHTS, dtype=dt)
    n_obs = w_t.sum().clamp_min(1.0)
    hinge_idx = torch.tensor([j for j, _ in backend.hinges], dtype=torch.long)
    hinge_ax = torch.stack([a for _, a in backend.hinges]).to(dt) if backend.hinges else None
    T = len(Xtri)
    delta = cfg.multiview_huber  # focal-normalised: residuals beyond it (wrong detections) cost linearly

    def loss_fn():
        R = lf.matrix_from_rot6d(root6)
        J = backend.body_points(R, roma.rotvec_to_rotmat(aa))[:, :K] * torch.exp(log_s) + transl[:, None]
        Xc = torch.einsum("vtij,tkj->vtki", Rc, J) + tc[:, :, None]
        z = Xc[..., 2:3].clamp_min(1e-3)
        proj = torch.einsum("vtij,vtkj->vtki", Kt[..., :2, :], torch.cat([Xc[..., :2] / z, torch.ones_like(z)], -1))
        r = ((proj - uv_t).norm(dim=-1) + 1e-9) / f
        huber = torch.where(r < delta, 0.5 * r ** 2, delta * (r - 0.5 * delta))
        loss = cfg.w_2d * (w_t * huber).sum() / n_obs * 100.0
        loss = loss + cfg.w_3d * 0.1 * (wt * ((J - Xt) ** 2).sum(-1)).sum() / wt.sum().clamp_min(1.0)
        loss = loss + fitting.pose_prior(aa, hinge_idx, hinge_ax, cfg, T)
        if T > 1:
            loss = loss + cfg.w_smooth * (((aa[1:] - aa[:-1]) ** 2).sum() + ((root6[1:] - root6[:-1]) ** 2).sum()) / T
        if T > 2:
            acc = J[2:] - 2 * J[1:-1] + J[:-2]
            loss = loss + cfg.w_accel * (acc ** 2).sum(-1).mean()
        return loss, J, r

    return loss_fn


def fit_multiview(backend, kp2d: np.ndarray, frame_ok: np.ndarray, Kmat: np.ndarray, E: np.ndarray,
                  cfg: fitting.FitConfig | None = None) -> dict[str, np.ndarray]:
    """kp2d (V, T, 33, 3) mediapipe pixels + visibility per view, frame_ok (V, T), Kmat (V, T, 3, 3), E (V, T, 4, 4).
    Returns per view: root_R (V, T, 3, 3) in camera axes, fit_points (V, T, K, 3) hip-centred in camera axes,
    err2d_px (V, T); shared: body_R (T, 21, 3, 3), body_aa, scale (1,), world_points (T, K, 3), fused (T,) =
    frames seen by at least two usable views."""
    cfg = cfg or fitting.FitConfig()
    torch.set_num_threads(max(1, cfg.threads))
    dt = backend.dtype
    uv, w = _targets(kp2d, frame_ok, cfg)
    P = Kmat.astype(np.float64) @ E[..., :3, :].astype(np.float64)
    uv, w, swapped = fix_swaps(uv, w, P)
    thr = cfg.multiview_outlier * (2 * Kmat[..., 0, 2] + 1)  # (V, T) px: a share of the image width
    Xtri, tri_ok, w = robust_triangulate(uv, w, P, thr) if len(uv) > 2 else (*triangulate(uv, w, P), w)
    params = _init(backend, Xtri, tri_ok, dt)
    loss_fn = _loss(backend, cfg, uv, w, Kmat, E, Xtri, tri_ok, *params)
    fitting._optimise(list(params[:4]), lambda: loss_fn()[0], cfg.optimizer, cfg.multiview_iterations, cfg.lr,
                      tolerance_change=cfg.multiview_tolerance)
    root6, aa, _transl, log_s, _ = params
    with torch.no_grad():
        _, J, r = loss_fn()
        R = lf.matrix_from_rot6d(root6)
    Rc = torch.as_tensor(E[..., :3, :3], dtype=dt)
    Jc = torch.einsum("vtij,tkj->vtki", Rc, J)
    Jc = Jc - 0.5 * (Jc[:, :, L_HIP] + Jc[:, :, R_HIP])[:, :, None]
    wb = (torch.as_tensor(w) > 0).to(dt)
    err2d = (r * torch.as_tensor(Kmat[..., 0, 0], dtype=dt)[..., None] * wb).sum(-1) / wb.sum(-1).clamp_min(1)
    fused = ((w > 0).sum(-1) >= 6).sum(0) >= 2
    # Disagreement between the views, relative to the person's size in each view: predicts the 3D error.
    seen = w > 0
    lo, hi = np.where(seen[..., None], uv, np.inf).min(2), np.where(seen[..., None], uv, -np.inf).max(2)
    size = np.where(seen.any(-1), (hi - lo).max(-1), np.inf).clip(1.0)
    vw = seen.any(-1)
    rel = (err2d.numpy() / size * vw).sum(0) / np.maximum(vw.sum(0), 1)
    e3 = np.linalg.norm(J.numpy() - Xtri, axis=-1) * tri_ok
    err3d = e3.sum(1) / np.maximum(tri_ok.sum(1), 1) * 1000  # vs the triangulated keypoints it was fitted to
    return {"root_R": (Rc @ R[None]).numpy(), "fit_points": Jc.numpy(), "err2d_px": err2d.numpy(),
            "body_R": roma.rotvec_to_rotmat(aa.detach()).numpy(), "body_aa": aa.detach().numpy(),
            "scale": torch.exp(log_s).detach().numpy(), "world_points": J.numpy(), "fused": fused,
            "err3d_mm": err3d.astype(np.float32), "residual_rel": rel.astype(np.float32),
            "swapped": swapped}


def cameras_from(camera_params: str | dict | None, num_frames: int, gt: dict | None = None):
    """Known cameras of one view: (K (T, 3, 3), E (T, 4, 4)) from the clip table's camera_params JSON when it holds
    `K` and `extrinsics` (calibrated captures: one matrix or one per frame), else from the synthetic ground
    truth's `K` / `extrinsics`; None when neither has them."""
    cp = json.loads(camera_params) if isinstance(camera_params, str) and camera_params else (camera_params or {})
    src = cp if "K" in cp and "extrinsics" in cp else gt
    if src is None or "K" not in src or "extrinsics" not in src:
        return None
    K, E = np.asarray(src["K"], np.float64), np.asarray(src["extrinsics"], np.float64)
    K = np.broadcast_to(K, (num_frames, 3, 3)) if K.ndim == 2 else K[:num_frames]
    E = np.broadcast_to(E, (num_frames, 4, 4)) if E.ndim == 2 else E[:num_frames]
    return (K, E) if len(K) == len(E) == num_frames else None


def attach_cameras(records: list[dict], clips: pd.DataFrame, ground_truth: dict | None) -> None:
    """Each clip's known cameras, from camera_params (calibrated captures) or the synthetic ground truth's K /
    extrinsics (clip id -> loader): `intrinsics` (T, 3, 3) for the perspective fit, and for synchronised groups
    (>= 2 views) group_id, group_members, cameras (K, E) for the fusion; `focal_px` from the clip table.
    Records are the labeller's clip dicts."""
    if not len(clips) or "group_id" not in clips:
        return
    members = clips.groupby("group_id")["clip_id"].apply(lambda c: sorted(map(str, c))).to_dict()
    rows = clips.set_index("clip_id")
    for r in records:
        if r["clip_id"] not in rows.index:
            continue
        g = rows.at[r["clip_id"], "group_id"]
        if "focal_px" in rows and pd.notna(rows.at[r["clip_id"], "focal_px"]):
            r["focal_px"] = float(rows.at[r["clip_id"], "focal_px"])
        cp = rows.at[r["clip_id"], "camera_params"] if "camera_params" in rows else None
        gt = (ground_truth or {}).get(r["clip_id"])
        T = int(r["num_frames"])
        cams = cameras_from(None if pd.isna(cp) else cp, T) or (
            cameras_from(None, T, gt()) if gt is not None else None)
        if cams is None:
            continue
        r["intrinsics"] = cams[0]  # the single-view perspective fit's focal
        if pd.notna(g) and len(members.get(g, ())) >= 2:
            r.update(group_id=str(g), group_members=members[g], cameras=cams)


def fuse_groups(items: list, bodies: list, backend, cfg: fitting.FitConfig) -> int:
    """Replace, in place, the single-view body fits of every synchronised group with >= 2 usable views and known
    cameras (items: (clip meta with group_id / cameras, detections, masks); bodies: per clip the fit_batch body
    dict) by the fused fit on the frames at least two views see. The wrist rotations stay the single-view
    ones (the hand anchors pin them there). Returns the number of clips fused."""
    groups: dict[str, list[int]] = {}
    for i, (clip, _, _) in enumerate(items):
        if clip.get("cameras") is not None and clip.get("group_id") and bodies[i] is not None:
            groups.setdefault(str(clip["group_id"]), []).append(i)
    n = 0
    wrists = [j for j, name in enumerate(lf.BODY_JOINT_NAMES.get(backend.name, ())) if "wrist" in name]
    for members in groups.values():
        T = min(len(items[i][1].person) for i in members)
        usable = [i for i in members if items[i][2]["valid"][:T].sum() >= 2]
        if len(usable) < 2:
            continue  # one usable view: the single-view fit stays
        kp2d = np.stack([items[i][1].pose2d[:T] for i in usable])
        ok = np.stack([items[i][2]["valid"][:T] for i in usable])
        Ks = np.stack([items[i][0]["cameras"][0][:T] for i in usable])
        Es = np.stack([items[i][0]["cameras"][1][:T] for i in usable])
        r = fit_multiview(backend, kp2d, ok, Ks, Es, cfg)
        f = np.nonzero(r["fused"])[0]
        bad = r["fused"] & (r["residual_rel"] > cfg.multiview_max_residual)
        for v, i in enumerate(usable):
            b, m = bodies[i], items[i][2]
            # Frames the views disagree on are not supervised (the fused error grows with the disagreement).
            m["valid"][:T] &= ~bad
            m["hand_valid"][:T] &= ~bad[:, None]
            keep = b["body_R"][f][:, wrists].copy()
            b["body_R"][f], b["root_R"][f] = r["body_R"][f], r["root_R"][v, f]
            b["body_R"][f[:, None], wrists] = keep
            b["fit_points"][f, :len(lf.FIT_KEYPOINTS)] = r["fit_points"][v, f]
            b["err2d_px"][f], b["err3d_mm"][f] = r["err2d_px"][v, f], r["err3d_mm"][f]
            b["scale"] = np.full_like(b["scale"], float(r["scale"][0]))
            b["fused"] = np.isin(np.arange(len(b["root_R"])), f)
            n += 1
    return n


__all__ = ["triangulate", "fix_swaps", "fit_multiview", "cameras_from", "attach_cameras", "fuse_groups"]
