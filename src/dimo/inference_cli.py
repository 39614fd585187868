"""`dimo` command line: animate / novel-view / stabilize / cameras (docs/inference.md).

    dimo animate ref.png driving.mp4 -o out.mp4 --camera arc_left_30
    dimo novel-view person.png -o orbit.mp4 --camera arc_left_30
    dimo stabilize shaky.mp4 -o steady.mp4
    python -m dimo.inference_cli ...   (the same)

Problems the user can fix (unreadable image, too-short video, unknown alias or camera key, ...) print one line,
`dimo <command>: error: <file or key>: <problem>`, and exit with status 2 (like argparse's usage errors).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

EXIT_USAGE = 2


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none to say."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, `dimo <command>: error: <problem>`, exit 2 (argparse prints the usage first)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser, default_output: str) -> None:
    p.add_argument("-o", "--output", default=None, help=f"output mp4 (default: <input name>{default_output})")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="models:/dimo@champion",
                   help="registry URI (models:/dimo@<alias> or models:/dimo/<version>) or a local folder with "
                        "dimo/, codec/ and text_encoder.json (default: %(default)s)")
    m.add_argument("--tracking-uri", default=None,
                   help="MLflow store holding the registry (default: $MLFLOW_TRACKING_URI; scripts/env.sh sets "
                        "the project's sqlite:///.../mlflow.db)")
    m.add_argument("--text-encoder-path", default=None,
                   help="local Wan2.1 folder for a UMT5 text encoder recorded on another machine "
                        "(default: the path recorded with the model)")
    m.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights / autocast precision (default: %(default)s)")
    s = p.add_argument_group("sampling")
    s.add_argument("--steps", type=int, default=30, help="Euler flow-matching steps (default: %(default)s)")
    s.add_argument("--guidance-text", type=float, default=5.0, help="text CFG scale, 1 = off (default: %(default)s)")
    s.add_argument("--guidance-motion", type=float, default=1.0,
                   help="motion CFG scale, 1 = off (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise")
    s.add_argument("--negative-prompt", default=None,
                   help="text CFG's negative prompt (default: none, the prompt-free branch)")
    z = p.add_argument_group("size and timing")
    z.add_argument("--target-area", type=int, default=None,
                   help="output pixels per frame, aspect of the reference kept (default: 128*128 for toy models, "
                        "480*854 at real scale)")
    z.add_argument("--size-multiple", type=int, default=16, help="each output side a multiple of this (default: 16)")
    z.add_argument("--max-frames", type=int, default=None,
                   help="longest output, cut to 1+4k (default: 33 toy, 121 real scale)")
    z.add_argument("--fps", type=float, default=16.0,
                   help="the model's frame rate; driving videos at another rate are resampled to it (default: 16)")
    z.add_argument("--driving-size", type=int, default=None,
                   help="driving frames are resized to about this side squared (default: the body encoder's input)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: a bar over the sampling "
                   "steps with its ETA, on stderr)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is done")


def _prompt_args(p: argparse.ArgumentParser, camera_help: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--camera", default=None, help=camera_help + " (`dimo cameras` lists the keys)")
    g.add_argument("--prompt", default=None, help="free-text prompt instead of the vocabulary one (default: the "
                   "camera's vocabulary sentence)")
    p.add_argument("--subject", default=None, help="subject for the vocabulary prompt (default: 'A person')")
    p.add_argument("--action", default=None, help="action for the vocabulary prompt (default: 'moves'; novel-view: "
                   "'stands still')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dimo", description="3DiMo inference: animate an image with a driving "
                     "video under a camera prompt, synthesise novel views, stabilise videos.",
                     epilog="`dimo COMMAND --help` lists the command's options and their defaults.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("animate", help="reference image + driving video + camera prompt -> video")
    a.add_argument("reference", help="reference image (png, jpg, ...; a video: its first frame)")
    a.add_argument("driving", help="driving video (mp4, mov, webm, ...)")
    _prompt_args(a, "camera motion key, e.g. static, arc_left_30, zoom_in (default: static)")
    a.add_argument("--keypoints", default=None, help="hand keypoints of the driving video: a pseudo-label .npz, an "
                   ".npz with hand_keypoints (T,2,21,3) [+ wrist_keypoints (T,2,3)] or an .npy; without it the "
                   "hand encoder sees fallback crops")
    _common(a, "_animate.mp4")

    n = sub.add_parser("novel-view", help="one image -> video of it under a camera motion (zero motion)")
    n.add_argument("image", help="image of the person")
    _prompt_args(n, "camera motion key, e.g. arc_left_30 (required unless --prompt)")
    n.add_argument("--frames", type=int, default=None, help="frames to generate, cut to 1+4k (default: max frames)")
    _common(n, "_novel_view.mp4")

    s = sub.add_parser("stabilize", help="shaky video -> the same motion from its first frame's fixed viewpoint")
    s.add_argument("video", help="video to stabilise (its first frame is the reference)")
    s.add_argument("--prompt", default=None, help="free-text prompt instead of '<subject> <action>. The camera "
                   "remains static.'")
    s.add_argument("--subject", default=None, help="subject for the prompt (default: 'A person')")
    s.add_argument("--action", default=None, help="action for the prompt (default: 'moves')")
    s.add_argument("--keypoints", default=None, help="hand keypoints of the video (see animate)")
    _common(s, "_stabilized.mp4")

    sub.add_parser("cameras", help="list the camera motion keys and their prompt sentences")
    return parser


def _output(args, first_input: str, suffix: str) -> str:
    if args.output:
        return args.output
    stem = os.path.splitext(os.path.basename(first_input))[0]
    return f"{stem}{suffix}"


def _run(args) -> str:
    from dimo import inference

    if args.max_frames is not None and args.max_frames < inference.MIN_FRAMES:
        raise inference.InferenceError(f"--max-frames {args.max_frames}: at least {inference.MIN_FRAMES} needed")
    if args.steps < 1:
        raise inference.InferenceError(f"--steps {args.steps}: at least 1 needed")
    if args.command == "animate":
        job = inference.prepare_animate(args.reference, args.driving, args.prompt, args.camera, args.subject,
                                        args.action, args.keypoints, args.fps)
        out = _output(args, args.reference, "_animate.mp4")
    elif args.command == "novel-view":
        job = inference.prepare_novel_view(args.image, args.prompt, args.camera, args.subject, args.action,
                                           args.frames)
        out = _output(args, args.image, "_novel_view.mp4")
    else:
        job = inference.prepare_stabilize(args.video, args.prompt, args.subject, args.action, args.keypoints,
                                          args.fps)
        out = _output(args, args.video, "_stabilized.mp4")
    options = inference.Options(num_steps=args.steps, guidance_text=args.guidance_text,
                                guidance_motion=args.guidance_motion, seed=args.seed, target_area=args.target_area,
                                size_multiple=args.size_multiple, max_frames=args.max_frames, fps=args.fps,
                                driving_size=args.driving_size, negative_prompt=args.negative_prompt,
                                progress=not args.no_progress)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar
    model = inference.load(args.model, args.device, args.tracking_uri, args.text_encoder_path, args.dtype)
    result = model.run(job, out, options)
    h, w = result.size
    return f"{result.path}: {result.num_frames} frames, {w}x{h}, {result.fps:g} fps; prompt: {result.prompt}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "cameras":
        from dimo import camera_vocabulary

        for key, motion in camera_vocabulary.vocabulary().items():
            print(f"{key:20s} {motion.describe()}")
        return 0
    # MLflow's advice to pyfunc authors, printed on every load: noise in a user's terminal.
    warnings.filterwarnings("ignore", message="Add type hints to the `predict` method")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from dimo.inference import InferenceError

    try:
        print(_run(args))
    except InferenceError as err:
        print(f"dimo {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
