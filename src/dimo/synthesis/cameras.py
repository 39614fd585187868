"""Camera rigs and trajectories implementing camera_vocabulary.yml.

World: Anny's (Z up, metres, ground z = 0, the performance centred at the origin). Cameras are OpenCV pinholes:
E = world->camera (x right, y down, z forward), K in pixels, principal point at the image centre.
Azimuth is the angle of the camera centre around the target, counter-clockwise seen from above (from +X
towards +Y); elevation is the camera's angle above the target's horizontal plane.

Trajectory parameters (per clip, progress s = t / (T - 1) from 0 to 1):
  orbit_deg      camera moves to its LEFT by that angle around the target (arc_left_*: +). Seen from above
                 with Z up, moving to the camera's left is clockwise, so the azimuth decreases by orbit_deg.
  elevation_deg  elevation change; dolly / truck / pedestal: metres along the camera's forward / right / up axes;
  zoom           focal factor at the end, f(s) = f0 * zoom ** s; jitter: handheld rotational shake (radians);
  vertigo        dolly zoom: the focal follows the distance, f(s) = f0 * dist(s) / dist0, with the start
                 distance dist0 = dolly / (1 - zoom) so that both the dolly and the end zoom are met exactly;
  swing          the orbit swings out and back, azimuth offset -orbit_deg * sin(2 pi s), with an eased zoom.
The camera keeps aiming at the target through orbits and elevation changes; translations move it without
re-aiming (a real dolly/truck/pedestal), so the subject drifts in frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dimo import camera_vocabulary

UP = np.array([0.0, 0.0, 1.0])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World->camera rotation (rows: right, down, forward) of a camera at eye looking at target, Z up."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, UP)
    x = x / np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * Kx + (1 - np.cos(angle)) * Kx @ Kx


@dataclass
class CameraPath:
    key: str
    K: np.ndarray  # (T, 3, 3)
    E: np.ndarray  # (T, 4, 4) world -> camera
    target: np.ndarray  # (3,)
    azimuth_deg: np.ndarray  # (T,) of the orbit position (before translations / shake)
    elevation_deg: np.ndarray  # (T,)
    distance: np.ndarray  # (T,) camera centre to target
    start: dict = field(default_factory=dict)  # sampled start values (azimuth, elevation, distance, focal)

    @property
    def centers(self) -> np.ndarray:
        R, t = self.E[:, :3, :3], self.E[:, :3, 3]
        return -np.einsum("tji,tj->ti", R, t)

    def params(self) -> dict:
        """What goes into the clip table's camera_params JSON."""
        traj = camera_vocabulary.get(self.key).trajectory
        return {"trajectory": traj, **{k: round(float(v), 4) for k, v in self.start.items()},
                "end_azimuth_deg": round(float(self.azimuth_deg[-1]), 3),
                "end_elevation_deg": round(float(self.elevation_deg[-1]), 3),
                "end_focal_px": round(float(self.K[-1, 0, 0]), 3)}


def _shake(num_frames: int, fps: float, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """(T, 3) smooth handheld rotation noise (yaw, pitch, roll) with peak ~amplitude radians."""
    t = np.arange(num_frames) / fps
    out = np.zeros((num_frames, 3))
    for k in range(3):
        freqs, phases = rng.uniform(0.4, 2.5, 3), rng.uniform(0, 2 * np.pi, 3)
        weights = np.array([1.0, 0.6, 0.3])
        out[:, k] = (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
    return amplitude * out / weights.sum() * np.array([1.0, 1.0, 0.5])


def build_path(key: str, num_frames: int, fps: float, target: np.ndarray, azimuth_deg: float,
               elevation_deg: float, distance: float, focal: float, width: int, height: int,
               rng: np.random.Generator) -> CameraPath:
    """A camera path for a vocabulary key, from its start azimuth/elevation/distance/focal (pixels)."""
    traj = camera_vocabulary.get(key).trajectory
    s = np.linspace(0.0, 1.0, num_frames)
    orbit = float(traj.get("orbit_deg", 0.0))
    if traj.get("swing"):
        az = azimuth_deg - orbit * np.sin(2 * np.pi * s)
        zoom_s = 3 * s**2 - 2 * s**3  # eased
    else:
        az = azimuth_deg - orbit * s
        zoom_s = s
    el = elevation_deg + float(traj.get("elevation_deg", 0.0)) * s
    shake = _shake(num_frames, fps, float(traj.get("jitter", 0.0)), rng)
    dolly, truck, ped = (float(traj.get(k, 0.0)) for k in ("dolly", "truck", "pedestal"))

    K = np.zeros((num_frames, 3, 3))
    E = np.zeros((num_frames, 4, 4))
    dist = np.zeros(num_frames)
    for t in range(num_frames):
        a, e = np.deg2rad(az[t]), np.deg2rad(el[t])
        orbit_pos = target + distance * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        R = look_at(orbit_pos, target)
        right, down, fwd = R
        eye = orbit_pos + s[t] * (dolly * fwd + truck * right - ped * down)
        if np.any(shake[t]):
            R = _rot(np.array([0.0, 1.0, 0.0]), shake[t, 0]) @ _rot(np.array([1.0, 0.0, 0.0]), shake[t, 1]) \
                @ _rot(np.array([0.0, 0.0, 1.0]), shake[t, 2]) @ R
        E[t, :3, :3], E[t, :3, 3], E[t, 3, 3] = R, -R @ eye, 1.0
        dist[t] = np.linalg.norm(eye - target)
        if traj.get("vertigo"):
            f = focal * dist[t] / distance
        else:
            f = focal * float(traj.get("zoom", 1.0)) ** zoom_s[t]
        K[t] = [[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]]
    return CameraPath(key, K, E, np.asarray(target, float), az, el, dist,
                      {"azimuth_deg": azimuth_deg, "elevation_deg": elevation_deg, "distance_m": distance,
                       "focal_px": focal, "vfov_deg": float(np.degrees(2 * np.arctan(height / 2 / focal)))})


def project(points: np.ndarray, K: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, 3) world points -> (T, N, 2) pixels and (T, N, 3) camera coordinates."""
    cam = np.einsum("tij,tnj->tni", E[:, :3, :3], points) + E[:, None, :3, 3]
    uvw = np.einsum("tij,tnj->tni", K, cam)
    return uvw[..., :2] / uvw[..., 2:3], cam


def fit_focal(path: CameraPath, points: np.ndarray, width: int, height: int, margin: float,
              near: float = 0.3) -> float | None:
    """The largest start focal (pixels) that keeps every point inside the image with `margin` (fraction of
    the shorter side) on every frame, for this path's geometry; None if a point gets behind the camera."""
    _, cam = project(points, np.broadcast_to(np.eye(3), path.K.shape), path.E)
    if cam[..., 2].min() < near:
        return None
    g = path.K[:, 0, 0][:, None] / path.start["focal_px"]  # focal profile per frame for f0 = 1
    m = margin * min(width, height)
    xn = np.abs(cam[..., 0] / cam[..., 2]) * g
    yn = np.abs(cam[..., 1] / cam[..., 2]) * g
    return float(min((width / 2 - m) / xn.max(), (height / 2 - m) / yn.max()))


def plan_camera(key: str, points: np.ndarray, target: np.ndarray, azimuth_deg: float, elevation_deg: float,
                distance: float, num_frames: int, fps: float, width: int, height: int, cfg: dict,
                rng: np.random.Generator) -> CameraPath:
    """A path for `key` that keeps `points` (T, N, 3) in frame: the start focal is fitted to the motion
    (times a random fill factor); if even the widest allowed lens cannot hold the subject, the camera
    steps back and tries again."""
    traj = camera_vocabulary.get(key).trajectory
    if traj.get("vertigo"):  # dolly zoom: the start distance is set by the dolly and the end zoom
        distance = float(traj["dolly"]) / (1.0 - float(traj["zoom"]))
    f_min = height / 2 / np.tan(np.deg2rad(cfg["max_vfov_deg"]) / 2)
    f_max = height / 2 / np.tan(np.deg2rad(cfg["min_vfov_deg"]) / 2)
    fill = float(rng.uniform(*cfg["fill"]))
    seed = int(rng.integers(2**31))
    for _ in range(int(cfg.get("max_tries", 8))):
        path = build_path(key, num_frames, fps, target, azimuth_deg, elevation_deg, distance, 1.0, width,
                          height, np.random.default_rng(seed))
        focal = fit_focal(path, points, width, height, cfg["margin"])
        if focal is not None and focal >= f_min:
            focal = min(focal * fill, f_max)
            return build_path(key, num_frames, fps, target, azimuth_deg, elevation_deg, distance, focal,
                              width, height, np.random.default_rng(seed))
        distance *= 1.25
    raise RuntimeError(f"camera {key}: cannot frame the subject (last distance {distance:.1f} m)")


def in_frame(uv: np.ndarray, width: int, height: int, margin_px: float = 0.0) -> np.ndarray:
    return ((uv[..., 0] >= -0.5 + margin_px) & (uv[..., 0] <= width - 0.5 - margin_px)
            & (uv[..., 1] >= -0.5 + margin_px) & (uv[..., 1] <= height - 0.5 - margin_px))
