"""The `Dimo` runner: a loaded model (DimoModel + codec + frozen text encoder) on a device that turns a checked
`Job` into a `Result` (frames, fps, prompt), sampling with a progress bar and writing the mp4 when asked."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dimo import video_io
from dimo.inference.inputs import (
    InferenceError,
    Job,
    Options,
    driving_indices,
    prepare_animate,
    prepare_novel_view,
    prepare_stabilize,
    usable_frames,
)

log = logging.getLogger(__name__)


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
