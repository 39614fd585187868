"""Keypoint detection with mediapipe's legacy solutions (pose: 33 landmarks + 3D world landmarks; hands: 21
landmarks per hand), in video mode so landmarks are tracked across frames.

Multi-person check (mediapipe's pose tracks one person): on every `second_pass_stride`-th frame the tracked
person's box (from its landmarks, padded) is painted over with the frame's mean colour and a separate
static-image pose detector runs on the rest; a confident second skeleton that does not overlap the first one
means another person is in view. A third confident hand is a second, independent signal (each person has two).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dimo.labelling import label_format as lf

N_POSE, N_HAND = len(lf.MEDIAPIPE_POSE), len(lf.MEDIAPIPE_HAND)
POSE_WRIST = (15, 16)  # left, right wrist landmarks


@dataclass
class DetectConfig:
    model_complexity: int = 1
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    smooth_landmarks: bool = True
    hand_model_complexity: int = 1
    max_num_hands: int = 4  # > 2 so that a second person's hands show up as a multi-person signal
    min_hand_score: float = 0.6
    hands: bool = True
    second_pass_stride: int = 16  # 0 disables the masked second pass
    second_pass_min_visibility: float = 0.6
    box_pad: float = 0.15
    blank_std: float = 4.0  # per-frame pixel std (0-255) below which a frame is blank

    @classmethod
    def from_params(cls, params: dict | None) -> DetectConfig:
        params = params or {}
        return cls(**{k: v for k, v in params.items() if k in cls.__dataclass_fields__})


def pose_model_path(model_complexity: int) -> str:
    """Where mediapipe looks for the pose landmark model of this complexity (lite/heavy come from
    scripts/install_assets.sh, since mediapipe would otherwise try to download them at run time)."""
    import mediapipe as mp

    name = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite", 2: "pose_landmark_heavy.tflite"}
    if model_complexity not in name:
        raise ValueError(f"model_complexity must be 0, 1 or 2, got {model_complexity}")
    return os.path.join(os.path.dirname(mp.__file__), "modules", "pose_landmark", name[model_complexity])


def check_models(cfg: DetectConfig) -> None:
    path = pose_model_path(cfg.model_complexity)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: model_complexity={cfg.model_complexity} needs the npm-shipped "
                                "model; run scripts/install_assets.sh")


@dataclass
class Detections:
    """Per-frame detector output for one clip (arrays documented in docs/labels.md)."""
    pose2d: np.ndarray  # (T, 33, 3) x_px, y_px, visibility
    pose3d: np.ndarray  # (T, 33, 4) world metres (hip-centred, camera axes) + visibility
    hand2d: np.ndarray  # (T, 2, 21, 3) x_px, y_px, score; hands ordered (left, right) of the person
    hand3d: np.ndarray  # (T, 2, 21, 4) world metres (hand-centred) + score
    person: np.ndarray  # (T,) bool pose found
    hand_ok: np.ndarray  # (T, 2) bool
    extra_hands: np.ndarray  # (T,) int confident hands beyond two
    person_count: np.ndarray  # (T,) int8: 1 / 2 (second person found) on checked frames, -1 unchecked, 0 none
    blank: np.ndarray  # (T,) bool
    height: int
    width: int

    @property
    def confidence(self) -> np.ndarray:
        """Per-frame confidence: mean visibility of the 12 limb landmarks (0 when no person)."""
        limbs = [11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]
        return np.where(self.person, self.pose2d[:, limbs, 2].mean(1), 0.0).astype(np.float32)


class Detector:
    """One pose tracker + hand tracker + static second-pass pose detector. Reset between clips (`detect` builds
    fresh trackers per clip: tracking state must not leak from one clip into the next)."""

    def __init__(self, cfg: DetectConfig | None = None):
        self.cfg = cfg or DetectConfig()
        check_models(self.cfg)
        self._second = None

    def _second_pass(self):
        import mediapipe as mp

        if self._second is None:
            self._second = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=self.cfg.model_complexity,
                                                  min_detection_confidence=self.cfg.min_detection_confidence)
        return self._second

    def close(self) -> None:
        if self._second is not None:
            self._second.close()
            self._second = None

    def detect(self, frames: np.ndarray) -> Detections:
        import mediapipe as mp

        cfg = self.cfg
        T, H, W = frames.shape[:3]
        out = Detections(
            pose2d=np.zeros((T, N_POSE, 3), np.float32), pose3d=np.zeros((T, N_POSE, 4), np.float32),
            hand2d=np.zeros((T, 2, N_HAND, 3), np.float32), hand3d=np.zeros((T, 2, N_HAND, 4), np.float32),
            person=np.zeros(T, bool), hand_ok=np.zeros((T, 2), bool), extra_hands=np.zeros(T, np.int64),
            person_count=np.full(T, -1, np.int8), blank=np.zeros(T, bool), height=H, width=W)
        std = frames.reshape(T, -1, 3).std(1).mean(1)
        out.blank[:] = std < cfg.blank_std
        pose = mp.solutions.pose.Pose(static_image_mode=False, model_complexity=cfg.model_complexity,
                                      smooth_landmarks=cfg.smooth_landmarks,
                                      min_detection_confidence=cfg.min_detection_confidence,
                                      min_tracking_confidence=cfg.min_tracking_confidence)
        hands = (mp.solutions.hands.Hands(static_image_mode=False, max_num_hands=cfg.max_num_hands,
                                          model_complexity=cfg.hand_model_complexity,
                                          min_detection_confidence=cfg.min_detection_confidence,
                                          min_tracking_confidence=cfg.min_tracking_confidence)
                 if cfg.hands else None)
        try:
            for t in range(T):
                frame = np.ascontiguousarray(frames[t])
                r = pose.process(frame)
                if r.pose_landmarks is not None:
                    out.person[t] = True
                    lm = r.pose_landmarks.landmark
                    out.pose2d[t] = [(p.x * W, p.y * H, p.visibility) for p in lm]
                    if r.pose_world_landmarks is not None:
                        out.pose3d[t] = [(p.x, p.y, p.z, v.visibility)
                                         for p, v in zip(r.pose_world_landmarks.landmark, lm)]
                if hands is not None:
                    self._hands(hands.process(frame), out, t, W, H)
                if cfg.second_pass_stride and t % cfg.second_pass_stride == 0:
                    out.person_count[t] = self._count_people(frame, out, t)
        finally:
            pose.close()
            if hands is not None:
                hands.close()
        return out

    def _hands(self, r, out: Detections, t: int, W: int, H: int) -> None:
        if not r.multi_hand_landmarks:
            return
        cands = []
        for lms, world, hd in zip(r.multi_hand_landmarks, r.multi_hand_world_landmarks or [None] * 9,
                                  r.multi_handedness):
            score = hd.classification[0].score
            if score < self.cfg.min_hand_score:
                continue
            # mediapipe labels handedness for a mirrored (selfie) image: on ordinary video "Left" is the
            # person's right hand.
            side = 1 if hd.classification[0].label == "Left" else 0
            xy = np.array([(p.x * W, p.y * H) for p in lms.landmark], np.float32)
            xyz = (np.array([(p.x, p.y, p.z) for p in world.landmark], np.float32) if world is not None
                   else np.zeros((N_HAND, 3), np.float32))
            cands.append((side, score, xy, xyz))
        if out.person[t] and cands:
            # Assign by distance to the pose's wrists (robust to handedness flips); handedness breaks ties.
            wr = out.pose2d[t, list(POSE_WRIST), :2]
            scale = max(np.ptp(out.pose2d[t, :, 0]), np.ptp(out.pose2d[t, :, 1]), 1.0)
            scored = []
            for i, (side, _score, xy, _) in enumerate(cands):
                for s in (0, 1):
                    d = np.linalg.norm(xy[0] - wr[s]) / scale + (0.0 if s == side else 0.05)
                    scored.append((d, i, s))
            used_c, used_s = set(), set()
            for d, i, s in sorted(scored):
                if i in used_c or s in used_s or d > 0.35:
                    continue
                used_c.add(i)
                used_s.add(s)
                self._put(out, t, s, cands[i])
            out.extra_hands[t] = max(0, len(cands) - 2)
        else:
            taken = set()
            for side, score, xy, xyz in sorted(cands, key=lambda c: -c[1]):
                if side not in taken:
                    taken.add(side)
                    self._put(out, t, side, (side, score, xy, xyz))
            out.extra_hands[t] = max(0, len(cands) - 2)

    @staticmethod
    def _put(out: Detections, t: int, s: int, cand) -> None:
        _, score, xy, xyz = cand
        out.hand_ok[t, s] = True
        out.hand2d[t, s, :, :2] = xy
        out.hand2d[t, s, :, 2] = score
        out.hand3d[t, s, :, :3] = xyz
        out.hand3d[t, s, :, 3] = score

    def _count_people(self, frame: np.ndarray, out: Detections, t: int) -> int:
        """0 (nobody tracked), 1, or 2 (someone else found once the tracked person is masked out)."""
        if not out.person[t]:
            return 0
        H, W = frame.shape[:2]
        vis = out.pose2d[t, :, 2] > 0.3
        pts = out.pose2d[t, vis, :2] if vis.any() else out.pose2d[t, :, :2]
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        pad = self.cfg.box_pad * max(x1 - x0, y1 - y0, 1.0)
        # The head sits above the top landmarks and a body continues below the frame: pad generously.
        box = (int(max(0, x0 - pad)), int(max(0, y0 - 2 * pad)), int(min(W, x1 + pad)), int(min(H, y1 + pad)))
        masked = frame.copy()
        masked[box[1]:box[3], box[0]:box[2]] = frame.reshape(-1, 3).mean(0).astype(np.uint8)
        r = self._second_pass().process(masked)
        if r.pose_landmarks is None:
            return 1
        lm = np.array([(p.x * W, p.y * H, p.visibility) for p in r.pose_landmarks.landmark])
        core = lm[[0, 11, 12, 23, 24]]
        if core[:, 2].mean() < self.cfg.second_pass_min_visibility:
            return 1
        # A second skeleton whose confident points mostly fall inside the masked box is the same person.
        good = lm[lm[:, 2] > 0.5]
        inside = ((good[:, 0] >= box[0]) & (good[:, 0] <= box[2]) & (good[:, 1] >= box[1]) & (good[:, 1] <= box[3]))
        return 1 if len(good) == 0 or inside.mean() > 0.5 else 2
