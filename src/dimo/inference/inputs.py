"""Inference inputs, read and checked before any model loads: prompts from the camera vocabulary, images,
driving videos and their rate, keypoint / pose files, the sampling `Options`, and one `Job` per task
(`prepare_animate`, `prepare_novel_view`, `prepare_stabilize`). Bad inputs fail here, in a second, with an
`InferenceError` whose message is one line naming the file (or key) and the problem."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dimo import camera_vocabulary, video_io
from dimo.labelling import label_format

DEFAULT_MODEL = "models:/dimo@champion"
MODEL_FPS = 16.0  # Wan2.1's native rate; every training clip is ingested / synthesised at it (conf globals)
MIN_FRAMES = 5  # 1 + 4k with k >= 1: the smallest clip with a motion latent frame after the reference one
FPS_TOLERANCE = 0.5  # a driving video within this of the model fps is used frame by frame (as in validate)
DEFAULT_ACTION = {"animate": "moves", "novel_view": "stands still", "stabilize": "moves"}
DEFAULT_SUBJECT = "A person"  # conf/base/parameters_ingest.yml default_subject


class InferenceError(ValueError):
    """A problem with the user's inputs or model choice; the message is one line naming the file / key."""


@dataclass
class Options:
    """Sampling and size options. `None` means: the default for the loaded model's scale (`resolve`)."""

    num_steps: int = 30
    guidance_text: float = 5.0
    guidance_motion: float = 1.0
    seed: int = 0
    target_area: int | None = None  # output pixels per frame; toy 128x128, real scale 480x854 (paper supp. E)
    size_multiple: int = 16  # VAE stride 8 x DiT patch 2
    max_frames: int | None = None  # longest output (1 + 4k); toy 33, real 121 (paper)
    fps: float = MODEL_FPS  # the rate the model was trained at; driving videos are resampled to it
    driving_size: int | None = None  # side of the square-equivalent driving frames (default: body encoder input)
    negative_prompt: str | None = None
    progress: bool = True

    @classmethod
    def from_sampling(cls, sampling: dict, **kwargs) -> Options:
        """Options from a `sampling` parameter block ({num_steps, guidance_text, guidance_motion, seed})."""
        return cls(num_steps=int(sampling["num_steps"]), guidance_text=float(sampling["guidance_text"]),
                   guidance_motion=float(sampling["guidance_motion"]), seed=int(sampling["seed"]), **kwargs)

    def resolve(self, model) -> Options:
        real = model.config.text_encoder == "umt5" or model.config.name.startswith("wan")
        body = model.config.body_encoder or {}
        size = body.get("sample_size")
        return replace(
            self,
            target_area=self.target_area or (480 * 854 if real else 128 * 128),
            max_frames=self.max_frames or (121 if real else 33),
            driving_size=self.driving_size or (round(math.sqrt(size[0] * size[1])) if size else 64),
        )



# ------------------------------------------------------------------ prompts, inputs
def camera_key(name: str) -> str:
    """A vocabulary key from a key ('arc_left_30') or label ('Arc Left 30'); InferenceError if unknown."""
    keys = camera_vocabulary.keys()
    if name in keys:
        return name
    try:
        return camera_vocabulary.normalise_label(name)
    except KeyError:
        raise InferenceError(f"unknown camera motion {name!r}; known keys: {', '.join(keys)}") from None


def build_prompt(prompt: str | None = None, camera: str | None = None, subject: str | None = None,
                 action: str | None = None, default_camera: str | None = "static", task: str = "animate") -> str:
    """The free-text prompt, or else the vocabulary prompt of `camera` (or `default_camera`) built like the
    training captions; both given is an error."""
    if prompt is not None and camera is not None:
        raise InferenceError("give either a free-text prompt or a camera key, not both")
    if prompt is not None:
        if not prompt.strip():
            raise InferenceError("the prompt is empty")
        return prompt
    key = camera or default_camera
    if key is None:
        raise InferenceError(f"{task}: give a camera motion (a vocabulary key) or a free-text prompt")
    return camera_vocabulary.prompt(camera_key(key), subject=subject or DEFAULT_SUBJECT,
                                    action=action or DEFAULT_ACTION.get(task, "moves"))


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image file (or the first frame of a video file)."""
    path = Path(path)
    if path.suffix.lower() in video_io.VIDEO_EXTENSIONS:
        return read_video(path, min_frames=1)[0][0]
    if not path.is_file():
        raise InferenceError(f"{path}: no such image file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            rgb = np.array(img.convert("RGB"))  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InferenceError(f"{path}: not a readable image ({type(err).__name__}: {one_line(err)})") from None
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise InferenceError(f"{path}: image too small ({rgb.shape[1]}x{rgb.shape[0]})")
    return rgb


def read_video(path: str | Path, min_frames: int = MIN_FRAMES) -> tuple[np.ndarray, float]:
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"{path}: no such video file")
    try:
        frames, fps = video_io.read_video(path)
    except video_io.VideoReadError as err:
        raise InferenceError(one_line(err)) from None
    if len(frames) < min_frames:
        raise InferenceError(f"{path}: video too short: {len(frames)} frame(s), at least {min_frames} needed")
    return frames, fps


def usable_frames(n: int, max_frames: int, compression: int = 4) -> int:
    """Largest 1 + compression*k <= min(n, max_frames)."""
    n = min(n, max_frames)
    return 1 + compression * ((n - 1) // compression) if n >= 1 else 0


def driving_indices(path: Path, num_frames: int, src_fps: float, opts: Options, compression: int = 4
                    ) -> tuple[np.ndarray, float]:
    """Frame indices of the driving video at the model's rate, cut to 1 + 4k <= max_frames; and the output fps
    (the video's own when it already is at the model's rate, else the model's)."""
    if abs(src_fps - opts.fps) <= FPS_TOLERANCE:
        idx, out_fps = np.arange(num_frames), src_fps
    else:
        idx, out_fps = video_io.resample_indices(num_frames, src_fps, opts.fps), opts.fps
    if len(idx) < MIN_FRAMES:
        raise InferenceError(f"{path}: video too short: {num_frames} frames at {src_fps:g} fps give {len(idx)} at "
                             f"the model's {opts.fps:g} fps, at least {MIN_FRAMES} needed")
    return idx[:usable_frames(len(idx), opts.max_frames, compression)], out_fps


def load_keypoints(path: str | Path, num_frames: int, height: int, width: int
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Hand keypoints (T, 2, 21, 3) and optional wrists (T, 2, 3), pixel (x, y, conf) in the driving video's frames.

    Accepts a pseudo-label .npz of the project (docs/labels.md: keypoints2d_hand, hand_valid, keypoints2d_body,
    valid, height, width), handled exactly as preprocess does; or an .npz with `hand_keypoints` (and optionally
    `wrist_keypoints`); or an .npy of hand keypoints. One row per frame of the driving video."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        if hasattr(data, "files"):  # .npz
            with data:
                arrays = {k: data[k] for k in data.files}
        else:
            arrays = {"hand_keypoints": data}
    except (OSError, ValueError) as err:
        raise InferenceError(f"{path}: not a readable keypoint file ({one_line(err)})") from None
    if "keypoints2d_hand" in arrays:  # a pseudo label
        missing = [k for k in ("hand_valid", "keypoints2d_body", "valid") if k not in arrays]
        if missing:
            raise InferenceError(f"{path}: pseudo label without {', '.join(missing)}")
        hands = arrays["keypoints2d_hand"].astype(np.float32).copy()
        hands[..., 2] *= arrays["hand_valid"][..., None]
        wrists = arrays["keypoints2d_body"][:, list(label_format.MEDIAPIPE_WRISTS)].astype(np.float32).copy()
        wrists[..., 2] *= arrays["valid"][:, None]
        lh, lw = int(arrays.get("height", 0)), int(arrays.get("width", 0))
        if lh and lw and (lh, lw) != (height, width):  # label made at another size: scale to the video's pixels
            scale = np.array([width / lw, height / lh, 1.0], np.float32)
            hands, wrists = hands * scale, wrists * scale
    elif "hand_keypoints" in arrays:
        hands = arrays["hand_keypoints"].astype(np.float32)
        wrists = arrays["wrist_keypoints"].astype(np.float32) if "wrist_keypoints" in arrays else None
    else:
        raise InferenceError(f"{path}: no hand keypoints (expected keypoints2d_hand or hand_keypoints)")
    if hands.shape != (num_frames, 2, 21, 3) or (wrists is not None and wrists.shape != (num_frames, 2, 3)):
        raise InferenceError(f"{path}: hand keypoints {hands.shape} do not match the driving video "
                             f"({num_frames} frames): expected ({num_frames}, 2, 21, 3)")
    return hands, wrists


def one_line(err) -> str:
    return " ".join(str(err).split())


# ------------------------------------------------------------------ jobs: inputs read and checked, no model yet
@dataclass
class Job:
    """One task's inputs, read and checked before any model is loaded (bad inputs fail in a second)."""

    task: str  # animate | novel_view | stabilize
    prompt: str
    driving: np.ndarray  # uint8 (T_src, H, W, 3) as read; novel view: the image once
    reference: np.ndarray | None = None  # uint8 (H, W, 3); None: the first used driving frame (stabilise)
    source: Path | None = None  # the driving file
    source_fps: float | None = None
    num_frames: int | None = None  # novel view: frames to generate (None: max_frames)
    hand_keypoints: np.ndarray | None = None  # (T_src, 2, 21, 3) in driving-video pixels
    wrist_keypoints: np.ndarray | None = None  # (T_src, 2, 3)
    pose: np.ndarray | None = None  # (T_src, P) pose targets of a pseudo label (the "w/ SMPL ctrl." ablation)


def _check_rate(path: Path, num_frames: int, src_fps: float, fps: float) -> None:
    if abs(src_fps - fps) > FPS_TOLERANCE:
        n = len(video_io.resample_indices(num_frames, src_fps, fps))
        if n < MIN_FRAMES:
            raise InferenceError(f"{path}: video too short: {num_frames} frames at {src_fps:g} fps give {n} at the "
                                 f"model's {fps:g} fps, at least {MIN_FRAMES} needed")


def _keypoints(job: Job, keypoints) -> Job:
    if keypoints is not None:
        T, H, W = job.driving.shape[:3]
        job.hand_keypoints, job.wrist_keypoints = load_keypoints(keypoints, T, H, W)
        job.pose = load_pose(keypoints)
    return job


def load_pose(path: str | Path) -> np.ndarray | None:
    """The pose targets (T, P) of a project pseudo label (docs/labels.md), or None for other keypoint files."""
    from dimo.labelling import label_format

    try:
        return label_format.pose_targets(label_format.load_label(path))[0]
    except (KeyError, ValueError, OSError):
        return None


def prepare_animate(reference, driving, prompt: str | None = None, camera: str | None = None,
                    subject: str | None = None, action: str | None = None, keypoints=None,
                    fps: float = MODEL_FPS) -> Job:
    text = build_prompt(prompt, camera, subject, action, task="animate")
    image = read_image(reference)
    frames, src_fps = read_video(driving)
    _check_rate(Path(driving), len(frames), src_fps, fps)
    return _keypoints(Job("animate", text, frames, image, Path(driving), src_fps), keypoints)


def prepare_novel_view(image, prompt: str | None = None, camera: str | None = None, subject: str | None = None,
                       action: str | None = None, num_frames: int | None = None) -> Job:
    text = build_prompt(prompt, camera, subject, action, default_camera=None, task="novel_view")
    if num_frames is not None and num_frames < MIN_FRAMES:
        raise InferenceError(f"novel-view: {num_frames} frames asked, at least {MIN_FRAMES} needed")
    rgb = read_image(image)
    return Job("novel_view", text, rgb[None], rgb, num_frames=num_frames)


def prepare_stabilize(video, prompt: str | None = None, subject: str | None = None, action: str | None = None,
                      keypoints=None, fps: float = MODEL_FPS) -> Job:
    text = build_prompt(prompt, None if prompt is not None else "static", subject, action, task="stabilize")
    frames, src_fps = read_video(video)
    _check_rate(Path(video), len(frames), src_fps, fps)
    return _keypoints(Job("stabilize", text, frames, None, Path(video), src_fps), keypoints)
