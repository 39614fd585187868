"""Inference: animate a reference image, synthesise novel views of one image, stabilise a video (docs/inference.md).

Three tasks, one model call (`DimoModel.generate`):

* `animate`: reference image + driving video + camera prompt -> video of the reference following the motion.
* `novel_view` (paper, supp. B): the driving clip is the image repeated T times (zero motion); the camera prompt
  alone moves the view.
* `stabilize` (paper, supp. B): the video's first frame is the reference, the whole video drives, the prompt says
  "The camera remains static.".

The model comes from the MLflow registry (`models:/dimo@champion`) or from a local folder laid out like a
registered version's artifacts (`dimo/`, `codec/vae/`, `text_encoder.json`). Errors the user can fix (unreadable
files, too-short videos, unknown aliases or camera keys, sizes the model cannot take) raise `InferenceError`,
whose message is one line naming the file (or key) and the problem.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dimo import camera_vocabulary, video_io
from dimo.labelling import label_format

log = logging.getLogger(__name__)

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


@dataclass
class Result:
    path: Path | None
    frames: np.ndarray  # uint8 (T, H, W, 3)
    fps: float
    prompt: str
    info: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


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
        raise InferenceError(f"{path}: not a readable image ({type(err).__name__}: {_one_line(err)})") from None
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
        raise InferenceError(_one_line(err)) from None
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
        raise InferenceError(f"{path}: not a readable keypoint file ({_one_line(err)})") from None
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


def _one_line(err) -> str:
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


# ------------------------------------------------------------------ the model
class Dimo:
    """A loaded model (DimoModel + codec + frozen text encoder) on a device, ready for the three tasks."""

    def __init__(self, model, codec, text_encoder, device: torch.device | str = "cpu", source: str = "",
                 dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        self.codec = codec.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device).eval()
        self.source = source
        if getattr(self.model.generator.config, "image_dim", None):
            raise InferenceError(f"{source}: this model ({model.config.name}) needs CLIP image embeddings of the "
                                 "reference, which this inference does not compute yet")

    # ---------------------------------------------------------------- tasks
    def animate(self, reference, driving, output=None, prompt: str | None = None, camera: str | None = None,
                subject: str | None = None, action: str | None = None, keypoints=None,
                options: Options | None = None) -> Result:
        fps = (options or Options()).fps
        return self.run(prepare_animate(reference, driving, prompt, camera, subject, action, keypoints, fps),
                        output, options)

    def novel_view(self, image, output=None, prompt: str | None = None, camera: str | None = None,
                   subject: str | None = None, action: str | None = None, num_frames: int | None = None,
                   options: Options | None = None) -> Result:
        return self.run(prepare_novel_view(image, prompt, camera, subject, action, num_frames), output, options)

    def stabilize(self, video, output=None, prompt: str | None = None, subject: str | None = None,
                  action: str | None = None, keypoints=None, options: Options | None = None) -> Result:
        fps = (options or Options()).fps
        return self.run(prepare_stabilize(video, prompt, subject, action, keypoints, fps), output, options)

    def run(self, job: Job, output=None, options: Options | None = None) -> Result:
        """Generate the job's video; written to `output` (mp4) when given."""
        opts = (options or Options()).resolve(self.model)
        c = self.codec.temporal_compression
        if job.task == "novel_view":  # zero motion: the image repeated; the camera prompt alone moves the view
            T = usable_frames(job.num_frames or opts.max_frames, job.num_frames or opts.max_frames, c)
            driving, hands, wrists, fps = np.repeat(job.driving[:1], T, axis=0), None, None, opts.fps
            pose = np.repeat(job.pose[:1], T, axis=0) if job.pose is not None else None
            info = {}
        else:
            idx, fps = driving_indices(job.source, len(job.driving), job.source_fps, opts, c)
            driving = job.driving[idx]
            hands = job.hand_keypoints[idx] if job.hand_keypoints is not None else None
            wrists = job.wrist_keypoints[idx] if job.wrist_keypoints is not None else None
            pose = job.pose[idx] if job.pose is not None else None
            info = {"source_frames": len(job.driving), "source_fps": job.source_fps}
        reference = job.reference if job.reference is not None else driving[0]
        if self.model.pose_tokenizer is not None and pose is None:
            raise InferenceError(f"{self.source}: this model ({self.model.config.variant}) is driven by body pose, "
                                 "not pixels: pass keypoints=<the driving video's pseudo-label .npz>")
        return self._generate(reference, driving, hands, wrists, job.prompt, opts, fps, output, job.task, info,
                              pose)

    # ---------------------------------------------------------------- internals
    def _generate(self, reference: np.ndarray, driving: np.ndarray, hands, wrists, text: str, opts: Options,
                  fps: float, output, task: str, info: dict | None = None, pose: np.ndarray | None = None) -> Result:
        T = len(driving)
        H, W = video_io.target_size(*reference.shape[:2], opts.target_area, opts.size_multiple)
        self._check_fits(T, H, W, opts)
        dh, dw = video_io.target_size(*driving.shape[1:3], opts.driving_size**2, 8)
        if hands is not None:  # keypoints follow the driving frames to their inference size
            scale = np.array([dw / driving.shape[2], dh / driving.shape[1], 1.0], np.float32)
            hands = torch.from_numpy(hands * scale)[None].to(self.device)
            wrists = torch.from_numpy(wrists * scale)[None].to(self.device) if wrists is not None else None
        ref = _to_tensor(video_io.resize_frames(reference[None], H, W))[:, 0]  # (1, 3, H, W)
        drv = _to_tensor(video_io.resize_frames(driving, dh, dw))  # (1, T, 3, dh, dw)
        emb, mask = self.text_encoder.encode([text])
        neg = self.text_encoder.encode([opts.negative_prompt])[0] if opts.negative_prompt else None
        gen = torch.Generator(device=self.device).manual_seed(int(opts.seed))
        log.info("%s: %d frames at %dx%d, %d steps, prompt %r", task, T, W, H, opts.num_steps, text)
        with self._progress(opts.num_steps, opts.progress, task), self._autocast():
            video = self.model.generate(
                self.codec, ref.to(self.device), drv.to(self.device), emb.to(self.device), mask.to(self.device),
                negative_text_embeddings=neg.to(self.device) if neg is not None else None,
                hand_keypoints=hands, wrist_keypoints=wrists,
                pose=torch.from_numpy(pose)[None].to(self.device) if pose is not None else None,
                num_steps=int(opts.num_steps),
                guidance_text=float(opts.guidance_text), guidance_motion=float(opts.guidance_motion), generator=gen)
        frames = ((video[0].float().permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames = frames.cpu().numpy()
        path = video_io.write_video(output, frames, fps) if output is not None else None
        info = {**(info or {}), "task": task, "hand_keypoints": hands is not None, "model": self.source,
                "num_steps": opts.num_steps, "seed": opts.seed}
        return Result(path, frames, fps, text, info)

    def _check_fits(self, T: int, H: int, W: int, opts: Options) -> None:
        """Wan's rotary embedding covers `rope_max_seq_len` positions per axis: refuse sizes beyond it clearly."""
        cfg = self.model.generator.config
        limit = int(getattr(cfg, "rope_max_seq_len", 1 << 30))
        pt, ph, pw = tuple(cfg.patch_size)
        s, c = self.codec.spatial_compression, self.codec.temporal_compression
        lat = ((T - 1) // c + 1) // pt, H // s // ph, W // s // pw
        if max(lat) > limit:
            raise InferenceError(f"{W}x{H} x {T} frames is too large for this model ({lat} patches per axis, at most "
                                 f"{limit}): lower the target area (now {opts.target_area}) or max frames")

    @contextlib.contextmanager
    def _autocast(self):
        if self.dtype == torch.float32:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    @contextlib.contextmanager
    def _progress(self, num_steps: int, enabled: bool, task: str):
        """A tqdm bar over the sampler's steps: the model's flow sampler is wrapped for the duration of the call."""
        if not enabled:
            yield
            return
        from tqdm.auto import tqdm

        flow = self.model.flow
        bar = tqdm(total=num_steps, desc=f"{task.replace('_', '-')}: sampling", unit="step")
        self.model.flow = _CountingFlow(flow, bar)
        try:
            yield
        finally:
            self.model.flow = flow
            bar.close()


class _CountingFlow:
    """Delegates to the model's FlowMatching; `sample` ticks a progress bar after each Euler step."""

    def __init__(self, flow, bar):
        self._flow, self._bar = flow, bar

    def __getattr__(self, name):
        return getattr(self._flow, name)

    def sample(self, velocity_fn, noise, num_steps):
        def counted(x, t):
            v = velocity_fn(x, t)
            self._bar.update(1)
            return v

        try:
            return self._flow.sample(counted, noise, num_steps)
        finally:
            self._bar.close()  # decoding follows: the bar ends with the sampling


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (1, T, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float() / 127.5 - 1.0


# ------------------------------------------------------------------ loading
def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise InferenceError(f"unknown device {device!r} ({_one_line(err)})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r} asked for but no CUDA GPU is available")
    return dev


def model_folder(model: str, tracking_uri: str | None = None) -> Path:
    """The artifacts folder of a registered version (downloaded once, cached under ./.cache/registry) or the
    given local folder, checked for dimo/, codec/ and text_encoder.json."""
    if model.startswith("models:/"):
        import warnings

        import mlflow

        with warnings.catch_warnings():  # MLflow's note about type hints on DimoPyfunc.predict: not for users
            warnings.simplefilter("ignore", UserWarning)
            from dimo.training import registry

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        uri = mlflow.get_tracking_uri()
        store = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        if store and store != ":memory:" and not Path(store).is_file():  # MLflow would create an empty store
            raise InferenceError(f"{store}: no MLflow store there, so no {model}; pass --tracking-uri (or set "
                                 "MLFLOW_TRACKING_URI, as scripts/env.sh does for the project's mlflow.db)")
        try:
            folder = registry.download(model)
        except LookupError as err:
            cause = getattr(err.__cause__, "message", None) or str(err)
            raise InferenceError(f"{model}: unknown registered model or alias in {uri} "
                                 f"({_one_line(cause)})") from None
    else:
        folder = Path(model)
        if not folder.is_dir():
            raise InferenceError(f"{model}: neither a registered model URI (models:/name@alias) nor a model folder")
    missing = [p for p in ("dimo", "codec", "text_encoder.json") if not (folder / p).exists()]
    if missing:
        raise InferenceError(f"{folder}: not a model folder, missing {', '.join(missing)} "
                             "(expected dimo/, codec/vae/, text_encoder.json)")
    return folder


def load(model: str = DEFAULT_MODEL, device: str | None = "auto", tracking_uri: str | None = None,
         text_encoder_path: str | None = None, dtype: torch.dtype | str = torch.float32) -> Dimo:
    """Load a model by registry URI (`models:/dimo@champion`, `models:/dimo/3`) or local folder.
    `text_encoder_path` overrides the UMT5 folder recorded at training time (another machine)."""
    dev = resolve_device(device)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    folder = model_folder(model, tracking_uri)

    from dimo.models import DimoModel, LatentCodec
    from dimo.models.text_encoder import from_spec

    spec = json.loads((folder / "text_encoder.json").read_text())
    if text_encoder_path:
        spec = {**spec, "path": text_encoder_path}
    dimo = DimoModel.from_pretrained(str(folder / "dimo"))
    codec = LatentCodec.from_pretrained(str(folder / "codec"), subfolder="vae")
    try:
        texts = from_spec(spec)
    except OSError as err:
        raise InferenceError(f"{folder / 'text_encoder.json'}: cannot load the text encoder {spec} "
                             f"({_one_line(err)}); pass its folder with text_encoder_path") from None
    return Dimo(dimo, codec, texts, dev, source=model, dtype=dtype)


# ------------------------------------------------------------------ one-call API
def animate(reference, driving, output=None, model: str | Dimo = DEFAULT_MODEL, options: Options | None = None,
            device: str | None = "auto", **kwargs) -> Result:
    """Reference image + driving video (+ prompt or camera key, subject, action, keypoints) -> Result.
    Inputs are checked before the model is loaded."""
    job = prepare_animate(reference, driving, fps=(options or Options()).fps, **kwargs)
    return _loaded(model, device).run(job, output, options)


def novel_view(image, output=None, model: str | Dimo = DEFAULT_MODEL, options: Options | None = None,
               device: str | None = "auto", **kwargs) -> Result:
    """One image + camera prompt (or key) -> Result; kwargs: prompt, camera, subject, action, num_frames."""
    return _loaded(model, device).run(prepare_novel_view(image, **kwargs), output, options)


def stabilize(video, output=None, model: str | Dimo = DEFAULT_MODEL, options: Options | None = None,
              device: str | None = "auto", **kwargs) -> Result:
    """A (shaky) video -> Result filmed from its first frame's fixed viewpoint; kwargs: subject, action, keypoints."""
    job = prepare_stabilize(video, fps=(options or Options()).fps, **kwargs)
    return _loaded(model, device).run(job, output, options)


def _loaded(model: str | Dimo, device) -> Dimo:
    return model if isinstance(model, Dimo) else load(model, device)
