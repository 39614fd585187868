"""Pseudo-label accuracy against synthetic ground truth (docs/synthesis.md: keypoints_cam, joints_2d, ...).

Like with like: the fitted body is evaluated on Anny's own COCO keypoint regressor, the same definition the
synthetic ground truth stores (`keypoints_cam`), so MPJPE has no definition offset. The raw mediapipe world
landmarks are evaluated on the same 17 COCO points too, but their definitions differ (mediapipe's hip and
shoulder landmarks are not Anny's regressed ones): that number includes a systematic offset of a few cm.
Both are root-aligned (mid-hip), in camera axes (mediapipe's world axes are the camera's); PA-MPJPE also
removes rotation and scale (similarity Procrustes). Hands: the 2D error (px) of mediapipe's 15 finger-joint
landmarks against the projected Anny finger-bone heads (`joints_2d`), and the wrist-aligned 3D error (mm) of the
fitted hand joints against `joints_cam`.
"""

from __future__ import annotations

import numpy as np

from dimo.labelling import label_format as lf

COCO17 = list(range(17))
MP_FOR_COCO17 = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]
# mediapipe hand landmark -> Anny finger bone (the joint at the bone's head); tips have no bone head.
MP_HAND_TO_BONE = {1: "finger1-1", 2: "finger1-2", 3: "finger1-3", 5: "finger2-1", 6: "finger2-2", 7: "finger2-3",
                   9: "finger3-1", 10: "finger3-2", 11: "finger3-3", 13: "finger4-1", 14: "finger4-2",
                   15: "finger4-3", 17: "finger5-1", 18: "finger5-2", 19: "finger5-3"}


def procrustes(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Similarity-align X (N, 3) onto Y (N, 3); returns aligned X."""
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    U, S, Vt = np.linalg.svd(Xc.T @ Yc)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1, 1, d])
    R = U @ D @ Vt
    s = (S * np.diag(D)).sum() / max((Xc ** 2).sum(), 1e-12)
    return s * Xc @ R + my


def _hip_centre(P: np.ndarray) -> np.ndarray:
    return P - 0.5 * (P[..., 11:12, :] + P[..., 12:13, :])


def clip_accuracy(label: dict, gt: dict) -> dict:
    """Per-clip errors on the label's valid frames. Returns sums and counts so clips can be pooled."""
    v = label["valid"].astype(bool)
    T = min(len(v), len(gt["keypoints_cam"]))
    v = v[:T]
    out = {"frames": int(T), "valid_frames": int(v.sum()), "detected_frames": int(label["person_detected"][:T].sum())}
    if not v.any():
        return out
    gtk = _hip_centre(np.asarray(gt["keypoints_cam"][:T], np.float64)[:, COCO17])
    fit = _hip_centre(np.asarray(label["fit_keypoints3d"][:T], np.float64)[:, COCO17])
    mp = _hip_centre(np.asarray(label["keypoints3d_body"][:T, MP_FOR_COCO17, :3], np.float64))
    e_fit = np.linalg.norm(fit - gtk, axis=-1)[v].mean(1)
    e_mp = np.linalg.norm(mp - gtk, axis=-1)[v].mean(1)
    pa_fit = np.array([np.linalg.norm(procrustes(fit[t], gtk[t]) - gtk[t], axis=-1).mean() for t in np.nonzero(v)[0]])
    pa_mp = np.array([np.linalg.norm(procrustes(mp[t], gtk[t]) - gtk[t], axis=-1).mean() for t in np.nonzero(v)[0]])
    out.update(mpjpe_fit=list(e_fit * 1000), pa_mpjpe_fit=list(pa_fit * 1000), mpjpe_mediapipe=list(e_mp * 1000),
               pa_mpjpe_mediapipe=list(pa_mp * 1000))
    # Hands, where the ground truth lists joints by bone name.
    names = [str(n) for n in gt.get("joint_names", [])]
    if names:
        out.update(hand_visibility(label, gt, names, T))
        hv = label["hand_valid"][:T] & v[:, None]
        e2d, e3d = [], []
        for s, side in enumerate(("L", "R")):
            idx = [names.index(f"{b}.{side}") if f"{b}.{side}" in names else -1 for b in MP_HAND_TO_BONE.values()]
            if min(idx) < 0 or not hv[:, s].any():
                continue
            mp_ids = list(MP_HAND_TO_BONE)
            frames_ = np.nonzero(hv[:, s])[0]
            uv = np.asarray(gt["joints_2d"])[frames_][:, idx]
            det2d = label["keypoints2d_hand"][frames_, s][:, mp_ids, :2]
            e2d += list(np.linalg.norm(det2d - uv, axis=-1).mean(1))
            if "fit_hand_points" in label and f"wrist.{side}" in names:
                wr = names.index(f"wrist.{side}")
                g = np.asarray(gt["joints_cam"])[frames_]
                g = g[:, idx] - g[:, wr:wr + 1]
                f = label["fit_hand_points"][frames_, s][:, mp_ids]
                e3d += list(np.linalg.norm(f - g, axis=-1).mean(1) * 1000)
        out.update(hand_err_2d_px=e2d, hand_err_3d_mm=e3d)
    return out


def hand_visibility(label: dict, gt: dict, names: list[str], T: int) -> dict:
    """Hands the ground truth shows (wrist + the 15 finger joints projected inside the image) and how many of
    those the label has (`hand_valid`), over both sides."""
    H, W = int(label["height"]), int(label["width"])
    vis = found = 0
    for s, side in enumerate(("L", "R")):
        bones = ["wrist", *MP_HAND_TO_BONE.values()]
        idx = [names.index(f"{b}.{side}") for b in bones if f"{b}.{side}" in names]
        if len(idx) < len(bones):
            continue
        uv = np.asarray(gt["joints_2d"])[:T][:, idx]
        inside = ((uv[..., 0] >= 0) & (uv[..., 0] <= W - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= H - 1)).all(1)
        vis += int(inside.sum())
        found += int((inside & label["hand_valid"][:T, s]).sum())
    return {"hand_visible_frames": vis, "hand_found_frames": found}


def azimuth_bins(az: np.ndarray, width: float) -> np.ndarray:
    """Bin label (bin centre, degrees in [0, 360)) of each azimuth; 0 deg = camera in front of the person."""
    a = np.mod(np.asarray(az, float) + width / 2, 360.0)
    return (np.floor(a / width) * width) % 360.0


def summarise(per_clip: list[dict], azimuths: list[float], bin_width: float) -> dict:
    """Pool per-clip results: mean errors over frames, detection rate per azimuth bin."""
    pool: dict[str, list] = {}
    for r in per_clip:
        for k in ("mpjpe_fit", "pa_mpjpe_fit", "mpjpe_mediapipe", "pa_mpjpe_mediapipe", "hand_err_2d_px",
                  "hand_err_3d_mm"):
            pool.setdefault(k, []).extend(r.get(k, []))
    out = {f"{k}{'' if k.endswith(('px', 'mm')) else '_mm'}": float(np.mean(v)) for k, v in pool.items() if v}
    frames = sum(r["frames"] for r in per_clip)
    out["detection_rate"] = sum(r["detected_frames"] for r in per_clip) / max(frames, 1)
    out["valid_rate"] = sum(r["valid_frames"] for r in per_clip) / max(frames, 1)
    by_bin: dict[float, list[int]] = {}
    for r, b in zip(per_clip, azimuth_bins(np.asarray(azimuths), bin_width) if per_clip else []):
        acc = by_bin.setdefault(float(b), [0, 0])
        acc[0] += r["detected_frames"]
        acc[1] += r["frames"]
    out["detection_rate_by_azimuth"] = {f"{b:g}": d / max(n, 1) for b, (d, n) in sorted(by_bin.items())}
    visible = sum(r.get("hand_visible_frames", 0) for r in per_clip)
    if visible:  # hands found where the ground truth shows them (per hand and frame)
        out["hand_found_rate"] = sum(r.get("hand_found_frames", 0) for r in per_clip) / visible
    out["clips"] = len(per_clip)
    return out


def plot(summary: dict, title: str = "pseudo-label accuracy"):
    """Figure: detection rate by azimuth bin, and the error bars (mm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    rates = summary.get("detection_rate_by_azimuth", {})
    if rates:
        axes[0].bar(list(rates), list(rates.values()), color="tab:blue")
        axes[0].set_ylim(0, 1.05)
    else:
        axes[0].text(0.5, 0.5, "no synthetic clips", ha="center", va="center")
    axes[0].set_xlabel("camera azimuth bin (deg)")
    axes[0].set_ylabel("detection rate")
    keys = [k for k in ("mpjpe_fit_mm", "pa_mpjpe_fit_mm", "mpjpe_mediapipe_mm", "pa_mpjpe_mediapipe_mm",
                        "hand_err_3d_mm") if k in summary]
    if keys:
        axes[1].barh([k.replace("_mm", "") for k in keys], [summary[k] for k in keys], color="tab:orange")
    axes[1].set_xlabel("error (mm)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = ["clip_accuracy", "summarise", "plot", "procrustes", "lf"]
