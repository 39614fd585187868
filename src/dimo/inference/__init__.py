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

Layout: `inputs` (prompts, files, options, jobs: everything checked before a model loads), `runner` (the `Dimo`
runner and its `Result`), `api` (loading a model and the one-call functions). Import from `dimo.inference`.
"""

from dimo.inference.api import animate, load, model_folder, novel_view, resolve_device, stabilize
from dimo.inference.inputs import (
                                   DEFAULT_ACTION,
                                   DEFAULT_MODEL,
                                   DEFAULT_SUBJECT,
                                   FPS_TOLERANCE,
                                   MIN_FRAMES,
                                   MODEL_FPS,
                                   InferenceError,
                                   Job,
                                   Options,
                                   build_prompt,
                                   camera_key,
                                   driving_indices,
                                   load_keypoints,
                                   load_pose,
                                   prepare_animate,
                                   prepare_novel_view,
                                   prepare_stabilize,
                                   read_image,
                                   read_video,
                                   usable_frames,
)
from dimo.inference.runner import Dimo, Result

__all__ = ["DEFAULT_ACTION", "DEFAULT_MODEL", "DEFAULT_SUBJECT", "FPS_TOLERANCE", "MIN_FRAMES", "MODEL_FPS", "Dimo",
           "InferenceError", "Job", "Options", "Result", "animate", "build_prompt", "camera_key", "driving_indices",
           "load", "load_keypoints", "load_pose", "model_folder", "novel_view", "prepare_animate",
           "prepare_novel_view", "prepare_stabilize", "read_image", "read_video", "resolve_device", "stabilize",
           "usable_frames"]
