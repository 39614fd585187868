"""SMPLify-style fitting of a body model to mediapipe keypoints, batched over all frames (and clips) at once.

Body: per frame a root rotation (6D) and 21 local joint rotations (axis-angle), per clip a scale, fitted to
  - the 3D world landmarks (metric, hip-centred, camera-aligned axes: x right, y down, z away from the camera),
  - the 2D landmarks through a weak-perspective camera solved in closed form per frame (so its gradient flows
    into the pose, and no camera parameters need optimising),
  - the hand detector's wrist-relative knuckle directions (pin the wrist rotation),
  with an L2 prior to rest, knee/elbow hinge limits (no off-axis bending, no hyper-extension) and temporal
  smoothness (rotation velocity, joint acceleration) between consecutive frames of the same clip.
Hands: per (frame, hand) a wrist rotation + 15 finger rotations, per clip and side a scale, fitted to the hand
  world landmarks (wrist-relative), with an L2 prior and temporal smoothness.
Initialisation is closed form (torso / palm frames by Kabsch), so a few dozen Adam steps suffice; the root frame
is therefore the camera frame: root_orient maps the body model's rest frame to camera axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import roma
import torch

from dimo.labelling import label_format as lf

# FIT_KEYPOINTS index -> mediapipe pose landmark index (-1: mediapipe has no such point).
MP_FOR_FIT = np.array([0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28, 31, 32, -1, -1, 29, 30])
# Relative trust per fit keypoint: face and foot points are defined differently by the two models.
FIT_WEIGHTS = np.array([0.5, 0.3, 0.3, 0.3, 0.3] + [1.0] * 12 + [0.5, 0.5, 0.0, 0.0, 0.5, 0.5], np.float32)
L_HIP, R_HIP, L_SH, R_SH = 11, 12, 5, 6


@dataclass
class FitConfig:
    optimizer: str = "lbfgs"  # lbfgs | adam
    iterations: int = 40
    lr: float = 0.05
    w_3d: float = 1.0
    w_2d: float = 1.0
    w_anchor: float = 0.3
    w_prior: float = 1e-4
    w_hinge: float = 0.1
    w_smooth: float = 1e-3
    w_accel: float = 0.1
    min_visibility: float = 0.3
    hand_iterations: int = 40
    perspective: bool = False  # single-view fit through a perspective camera (else weak perspective)
    default_vfov_deg: float = 55.0  # its vertical field of view when neither intrinsics nor focal_px are known
    w_depth: float = 0.01  # perspective fit: pull of the camera depth towards the weak-perspective one
    multiview_iterations: int = 150  # LBFGS evaluations of the multi-view fusion (multiview.py)
    multiview_tolerance: float = 1e-6  # the fusion stops early below this loss change (same accuracy, ~1/3 time)
    multiview_huber: float = 0.02  # Huber knee of the reprojection residual / focal (6 px at f = 300)
    multiview_max_residual: float = 0.045  # fused frames whose views disagree more (share of person size): invalid
    multiview_outlier: float = 0.03  # a view's keypoint further than this share of the width is an outlier
    hand_lr: float = 0.05
    w_hand_prior: float = 1e-6
    w_hand_smooth: float = 1e-4
    threads: int = 1  # fitting runs next to the detector: one thread is enough and avoids oversubscription
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict | None) -> FitConfig:
        params = dict(params or {})
        known = {k: params.pop(k) for k in list(params) if k in cls.__dataclass_fields__}
        return cls(**known, extra=params)


def _frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Orthonormal frame (..., 3, 3) with x along a, z along b's component orthogonal to a."""
    x = torch.nn.functional.normalize(a, dim=-1)
    z = torch.nn.functional.normalize(b - (b * x).sum(-1, keepdim=True) * x, dim=-1)
    return torch.stack([x, torch.linalg.cross(z, x, dim=-1), z], -1)


def _fill_nearest(ok: np.ndarray) -> np.ndarray:
    """Index of the nearest frame where ok is True (itself when ok); identity when none is."""
    idx = np.arange(len(ok))
    if not ok.any():
        return idx
    good = np.nonzero(ok)[0]
    return good[np.abs(idx[:, None] - good[None]).argmin(1)]


def _pairs(segment: np.ndarray, ok: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive frame pairs inside one segment (clip)."""
    same = segment[1:] == segment[:-1]
    i = np.nonzero(same)[0]
    return torch.as_tensor(i), torch.as_tensor(i + 1)


def _weak_perspective(J: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    """Closed-form weighted least squares x ~ a * J_xy + b per frame. J, x: (B, K, 2), w: (B, K).
    Returns the residual in model units (x / a vs J), a (B,), b (B, 2)."""
    ws = w.sum(1, keepdim=True).clamp_min(1e-6)
    Jc = J - (w[..., None] * J).sum(1, keepdim=True) / ws[..., None]
    xm = (w[..., None] * x).sum(1, keepdim=True) / ws[..., None]
    xc = x - xm
    a = ((w[..., None] * Jc * xc).sum((1, 2)) / (w[..., None] * Jc * Jc).sum((1, 2)).clamp_min(1e-9)).clamp_min(1e-3)
    resid = Jc - xc / a[:, None, None]
    b = xm[:, 0] - a[:, None] * (J - Jc)[:, 0]
    return resid, a, b


def _perspective(J: torch.Tensor, x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, c: torch.Tensor,
                 w_depth: float) -> torch.Tensor:
    """Perspective residual with the camera translation solved in closed form per frame (weighted linear least
    squares on u - c = f (X + t)_xy / (Z + t_z)), its depth pulled towards the weak-perspective depth f / a
    (`w_depth`: the depth prior). J (B, K, 3) hip-centred model points in camera axes (m), x (B, K, 2) px,
    w (B, K), f (B,), c (B, 2). Returns the residual (B, K, 2) in metres at the body's depth and t (B, 3)."""
    u = x - c[:, None]
    ws = w.sqrt()[..., None]
    zero = torch.zeros_like(u[..., 0])
    fk = f[:, None].expand_as(zero)
    A = torch.stack([torch.stack([fk, zero, -u[..., 0]], -1), torch.stack([zero, fk, -u[..., 1]], -1)], -2)
    fc = f[:, None]
    b = torch.stack([u[..., 0] * J[..., 2] - fc * J[..., 0], u[..., 1] * J[..., 2] - fc * J[..., 1]], -1)
    A, b = (A * ws[..., None]).flatten(1, 2), (b * ws).flatten(1, 2)  # (B, 2K, 3), (B, 2K)
    with torch.no_grad():
        _, a, _ = _weak_perspective(J[..., :2], x, w)
        tz0 = f / a.clamp_min(1e-6)
    lam = w_depth * f ** 2 * w.sum(1).clamp_min(1e-6)
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=J.dtype)
    AtA = A.transpose(1, 2) @ A + lam[:, None, None] * torch.outer(ez, ez)
    Atb = (A.transpose(1, 2) @ b[..., None])[..., 0] + (lam * tz0)[:, None] * ez
    t = torch.linalg.solve(AtA + 1e-9 * torch.eye(3, dtype=J.dtype), Atb)
    P = J + t[:, None]
    proj = f[:, None, None] * P[..., :2] / P[..., 2:].clamp_min(1e-3)
    return (proj - u) * (t[:, 2] / f)[:, None, None], t


def _optimise(params, closure_loss, kind: str, iterations: int, lr: float, tolerance_change: float = 1e-12) -> None:
    """LBFGS (strong-Wolfe line search; `iterations` = function evaluations, fewer once a step changes the loss by
    less than `tolerance_change`) or Adam (`iterations` = steps)."""
    if kind == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, max_eval=iterations, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=tolerance_change)

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = closure_loss()
            loss.backward()
            return loss

        opt.step(closure)
        return
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = closure_loss()
        loss.backward()
        opt.step()


def _body_targets(kp3d: np.ndarray, kp2d: np.ndarray, frame_ok: np.ndarray, image_size, cfg: FitConfig, dt):
    """The fit's targets: hip-centred 3D keypoints X (T, K, 3), their weights w (T, K), the 2D keypoints x2d
    (T, K, 2) divided by the image's longer side `scale2d`."""
    have = MP_FOR_FIT >= 0
    src = np.where(have, MP_FOR_FIT, 0)
    X = torch.as_tensor(kp3d[:, src, :3], dtype=dt)
    vis = np.minimum(kp3d[:, src, 3], kp2d[:, src, 2])
    w = np.where(vis >= cfg.min_visibility, vis, 0.0) * FIT_WEIGHTS * have * frame_ok[:, None]
    w = torch.as_tensor(w, dtype=dt)
    scale2d = float(max(image_size))
    x2d = torch.as_tensor(kp2d[:, src, :2] / scale2d, dtype=dt)
    X = X - 0.5 * (X[:, L_HIP] + X[:, R_HIP])[:, None]
    return X, w, x2d, scale2d


def _body_init(backend, X: torch.Tensor, frame_ok: np.ndarray, segment: np.ndarray, n_seg: int, dt):
    """Closed-form start: the root from the torso frames (Kabsch), rest joint rotations, a scale per clip from
    the torso + limb lengths. Returns the parameters to optimise (root6, aa, log_s)."""
    T, K = len(X), len(lf.FIT_KEYPOINTS)
    with torch.no_grad():
        rest = backend.body_points(torch.eye(3, dtype=dt)[None], torch.eye(3, dtype=dt).expand(1, 21, 3, 3))[0]
    rest_k = rest[:K] - 0.5 * (rest[L_HIP] + rest[R_HIP])
    # Closed-form root: the rest torso frame (hip axis, hips -> shoulders) onto the observed one.
    F_rest = _frame(rest_k[L_HIP] - rest_k[R_HIP], 0.5 * (rest_k[L_SH] + rest_k[R_SH]))
    F_obs = _frame(X[:, L_HIP] - X[:, R_HIP], 0.5 * (X[:, L_SH] + X[:, R_SH]))
    fill = torch.as_tensor(_fill_nearest(frame_ok))
    R0 = (F_obs @ F_rest.T)[fill]
    root6 = lf.rot6d_from_matrix(R0).clone().requires_grad_(True)
    aa = torch.zeros(T, 21, 3, dtype=dt, requires_grad=True)
    # Scale per clip from the torso + limb lengths (hip-shoulder, shoulder-elbow, hip-knee).
    segs = [(L_HIP, L_SH), (R_HIP, R_SH), (L_SH, 7), (R_SH, 8), (L_HIP, 13), (R_HIP, 14)]
    def _len(P):
        return torch.stack([(P[..., a, :] - P[..., b, :]).norm(dim=-1) for a, b in segs], -1).sum(-1)
    obs_len = _len(X)
    log_s = torch.zeros(max(n_seg, 1), dtype=dt)
    for g in range(n_seg):
        m = torch.as_tensor((segment == g) & frame_ok)
        if m.any():
            log_s[g] = torch.log(obs_len[m].median() / _len(rest_k).clamp_min(1e-6))
    log_s.requires_grad_(True)
    return root6, aa, log_s


def pose_prior(aa: torch.Tensor, hinge_idx: torch.Tensor, hinge_ax: torch.Tensor | None, cfg: FitConfig,
               T: int) -> torch.Tensor:
    """The body fit's pose prior: small local rotations, and hinge joints (knees, elbows) that bend about their own
    axis only, forwards, up to 2.6 rad. Shared by the single-view and the multi-view fit."""
    loss = cfg.w_prior * (aa ** 2).sum() / max(T, 1)
    if hinge_ax is not None:
        v = aa[:, hinge_idx]
        flex = (v * hinge_ax).sum(-1)
        off_axis = v - flex[..., None] * hinge_ax
        loss = loss + cfg.w_hinge * ((off_axis ** 2).sum(-1) + torch.relu(-flex - 0.05) ** 2
                                     + torch.relu(flex - 2.6) ** 2).sum() / max(T, 1)
    return loss


def _body_loss(backend, cfg: FitConfig, X, w, x2d, segment: np.ndarray, frame_ok: np.ndarray, hand3d, hand_ok,
               root6, aa, log_s, focal=None, centre=None, scale2d=1.0):
    """The fit's objective as a closure -> (loss, hip-centred fitted keypoints J (T, K, 3))."""
    T, K, dt = len(X), len(lf.FIT_KEYPOINTS), backend.dtype
    # Hand anchors: knuckle offsets from the wrist, as the hand detector sees them.
    anchors = getattr(backend, "hand_anchors", ())
    use_anchor = hand3d is not None and len(anchors) > 0 and cfg.w_anchor > 0
    if use_anchor:
        H = torch.as_tensor(hand3d[:, :, list(anchors), :3], dtype=dt)  # (T, 2, 4, 3)
        H_off = H[:, :, 1:] - H[:, :, :1]
        aw = torch.as_tensor((hand_ok & frame_ok[:, None]).astype(np.float32), dtype=dt)  # (T, 2)

    hinge_idx = torch.tensor([j for j, _ in backend.hinges], dtype=torch.long)
    hinge_ax = torch.stack([a for _, a in backend.hinges]).to(dt) if backend.hinges else None
    i0, i1 = _pairs(segment)
    same3 = (segment[2:] == segment[:-2]) if T > 2 else np.zeros(0, bool)
    a3 = torch.as_tensor(np.nonzero(same3)[0])
    seg_t = torch.as_tensor(segment)
    n_obs = w.sum().clamp_min(1.0)

    def loss_fn():
        R = lf.matrix_from_rot6d(root6)
        Jall = backend.body_points(R, roma.rotvec_to_rotmat(aa)) * torch.exp(log_s)[seg_t][:, None, None]
        J = Jall[:, :K]
        J = J - 0.5 * (J[:, L_HIP] + J[:, R_HIP])[:, None]
        e3 = ((J - X) ** 2).sum(-1)
        loss = cfg.w_3d * (w * e3).sum() / n_obs
        if cfg.w_2d > 0 and focal is not None:  # perspective: pixels and the focal in pixels
            resid, _ = _perspective(J, x2d * scale2d, w, focal, centre, cfg.w_depth)
            loss = loss + cfg.w_2d * (w * (resid ** 2).sum(-1)).sum() / n_obs
        elif cfg.w_2d > 0:
            resid, _, _ = _weak_perspective(J[..., :2], x2d, w)
            loss = loss + cfg.w_2d * (w * (resid ** 2).sum(-1)).sum() / n_obs
        if use_anchor:
            A = Jall[:, K:].reshape(T, 2, len(anchors), 3)
            off = A[:, :, 1:] - A[:, :, :1]
            loss = loss + cfg.w_anchor * (aw[..., None] * ((off - H_off) ** 2).sum(-1)).sum() / n_obs
        loss = loss + pose_prior(aa, hinge_idx, hinge_ax, cfg, T)
        if len(i0):
            loss = loss + cfg.w_smooth * (((aa[i1] - aa[i0]) ** 2).sum()
                                          + ((root6[i1] - root6[i0]) ** 2).sum()) / max(T, 1)
        if len(a3):
            acc = J[a3 + 2] - 2 * J[a3 + 1] + J[a3]
            loss = loss + cfg.w_accel * (acc ** 2).sum(-1).mean()
        return loss, J

    return loss_fn


def fit_body(backend, kp3d: np.ndarray, kp2d: np.ndarray, frame_ok: np.ndarray, segment: np.ndarray | None = None,
             hand3d: np.ndarray | None = None, hand_ok: np.ndarray | None = None, image_size=(1, 1),
             cfg: FitConfig | None = None, focal: np.ndarray | None = None,
             centre: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """kp3d (T, 33, 4) world landmarks + visibility, kp2d (T, 33, 3) pixels + visibility, frame_ok (T,),
    segment (T,) clip index of each frame (smoothness and scale stay within a clip), hand3d (T, 2, 21, 4)
    and hand_ok (T, 2) for the wrist anchors; focal (T,) px: a perspective camera (principal point at the
    image centre, or centre (T, 2) px) with a depth prior, else weak perspective. Returns numpy arrays (see keys at
    the end)."""
    cfg = cfg or FitConfig()
    torch.set_num_threads(max(1, cfg.threads))
    T = len(kp3d)
    segment = np.zeros(T, np.int64) if segment is None else np.asarray(segment)
    n_seg = int(segment.max()) + 1 if T else 0
    dt = backend.dtype
    X, w, x2d, scale2d = _body_targets(kp3d, kp2d, frame_ok, image_size, cfg, dt)
    root6, aa, log_s = _body_init(backend, X, frame_ok, segment, n_seg, dt)
    persp = {}
    if focal is not None:
        H, W = image_size
        c = np.broadcast_to([(W - 1) / 2, (H - 1) / 2], (T, 2)) if centre is None else centre
        persp = {"focal": torch.as_tensor(np.asarray(focal, np.float64), dtype=dt), "scale2d": scale2d,
                 "centre": torch.as_tensor(np.array(c, np.float64), dtype=dt)}
    loss_fn = _body_loss(backend, cfg, X, w, x2d, segment, frame_ok, hand3d, hand_ok, root6, aa, log_s, **persp)
    _optimise([root6, aa, log_s], lambda: loss_fn()[0], cfg.optimizer, cfg.iterations, cfg.lr)

    with torch.no_grad():
        loss, J = loss_fn()
        R = lf.matrix_from_rot6d(root6)
        e3 = (J - X).norm(dim=-1)
        wb = (w > 0).to(dt)
        err3d = (e3 * wb).sum(1) / wb.sum(1).clamp_min(1)
        resid, a, b = _weak_perspective(J[..., :2], x2d, w)
        err2d = (resid.norm(dim=-1) * a[:, None] * scale2d * wb).sum(1) / wb.sum(1).clamp_min(1)
        if persp:
            rp, t = _perspective(J, x2d * scale2d, w, persp["focal"], persp["centre"], cfg.w_depth)
            px = rp.norm(dim=-1) * (persp["focal"] / t[:, 2].clamp_min(1e-3))[:, None]
            err2d = (px * wb).sum(1) / wb.sum(1).clamp_min(1)
        scale = torch.exp(log_s)
    return {
        "root_R": R.numpy(), "body_R": roma.rotvec_to_rotmat(aa.detach()).numpy(), "body_aa": aa.detach().numpy(),
        "scale": scale.numpy(), "fit_points": J.numpy(),
        # weak-perspective camera in pixels: u = s * X + tx (model units, hip-centred camera axes)
        "camera_wp": torch.cat([(a * scale2d)[:, None], b * scale2d], 1).numpy(),
        "err3d_mm": (err3d * 1000).numpy(), "err2d_px": err2d.numpy(), "loss": float(loss),
    }


def fit_hands(backend, hand3d: np.ndarray, hand_ok: np.ndarray, segment: np.ndarray | None = None,
              cfg: FitConfig | None = None) -> dict[str, np.ndarray]:
    """hand3d (T, 2, 21, 4) world landmarks (+ score), hand_ok (T, 2). Both sides and all frames in one batch
    per side. Returns G (T, 2, 3, 3) wrist world rotations, finger_R (T, 2, 15, 3, 3), err_mm (T, 2)."""
    cfg = cfg or FitConfig()
    torch.set_num_threads(max(1, cfg.threads))
    T = len(hand3d)
    dt = backend.dtype
    segment = np.zeros(T, np.int64) if segment is None else np.asarray(segment)
    n_seg = int(segment.max()) + 1 if T else 1
    out_G = np.tile(np.eye(3, dtype=np.float32), (T, 2, 1, 1))
    out_F = np.tile(np.eye(3, dtype=np.float32), (T, 2, 15, 1, 1))
    err = np.zeros((T, 2), np.float32)
    scales = np.ones((n_seg, 2), np.float32)  # per clip and side
    for side in (0, 1):
        ok = hand_ok[:, side]
        if not ok.any():
            continue
        code = "L" if side == 0 else "R"
        X = torch.as_tensor(hand3d[:, side, :, :3], dtype=dt)
        X = X - X[:, :1]
        with torch.no_grad():
            G_rest = backend.hand_rest_G(code).to(dt)
            rest = backend.hand_points(code, G_rest[None], torch.eye(3, dtype=dt).expand(1, 15, 3, 3))[0]
        # Palm frame: wrist -> middle knuckle, index -> pinky knuckle.
        F_rest = _frame(rest[9] - rest[0], rest[17] - rest[5])
        F_obs = _frame(X[:, 9] - X[:, 0], X[:, 17] - X[:, 5])
        fill = torch.as_tensor(_fill_nearest(ok))
        G0 = (F_obs @ F_rest.T @ G_rest)[fill]
        g6 = lf.rot6d_from_matrix(G0).clone().requires_grad_(True)
        aa = torch.zeros(T, 15, 3, dtype=dt, requires_grad=True)
        palm = lambda P: (P[..., 9, :] - P[..., 0, :]).norm(dim=-1) + (P[..., 17, :] - P[..., 5, :]).norm(dim=-1)  # noqa: E731
        log_s = torch.zeros(n_seg, dtype=dt)
        for g in range(n_seg):
            m = torch.as_tensor((segment == g) & ok)
            if m.any():
                log_s[g] = torch.log(palm(X[m]).median() / palm(rest).clamp_min(1e-6))
        log_s.requires_grad_(True)
        wt = torch.as_tensor(ok.astype(np.float32), dtype=dt)
        seg_t = torch.as_tensor(segment)
        i0, i1 = _pairs(segment)
        n_obs = wt.sum().clamp_min(1.0) * 21

        def loss_fn():
            P = backend.hand_points(code, lf.matrix_from_rot6d(g6), roma.rotvec_to_rotmat(aa))
            P = P * torch.exp(log_s)[seg_t][:, None, None]
            e = ((P - X) ** 2).sum(-1)
            loss = (wt[:, None] * e).sum() / n_obs + cfg.w_hand_prior * (aa ** 2).sum() / max(T, 1)
            if len(i0):
                loss = loss + cfg.w_hand_smooth * (((aa[i1] - aa[i0]) ** 2).sum()
                                                   + ((g6[i1] - g6[i0]) ** 2).sum()) / max(T, 1)
            return loss, e

        _optimise([g6, aa, log_s], lambda: loss_fn()[0], cfg.optimizer, cfg.hand_iterations, cfg.hand_lr)
        with torch.no_grad():
            _, e = loss_fn()
            out_G[:, side] = lf.matrix_from_rot6d(g6).numpy()
            out_F[:, side] = roma.rotvec_to_rotmat(aa).numpy()
            err[:, side] = np.where(ok, e.sqrt().mean(1).numpy() * 1000, 0.0)
            scales[:, side] = torch.exp(log_s).detach().numpy()
    return {"G": out_G, "finger_R": out_F, "err_mm": err, "scale": scales}
