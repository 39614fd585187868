"""Inference (animate / novel-view / stabilize) from a tiny model registered in a throwaway MLflow store:
output frames, size and fps per command, the one-line exit-2 errors of the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dimo import camera_vocabulary, inference, video_io
from dimo.labelling import label_format
from tests.conftest import VENV_BIN, moving_frames, tiny_champion_store

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader")
AREA = 32 * 48  # 72x96 inputs -> 32x48 outputs (multiples of 16); small: VAE decoding dominates on CPU
OPTS = inference.Options(num_steps=2, target_area=AREA, progress=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tmp dir with an MLflow sqlite store holding `dimo@champion` (tiny model) and the test inputs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("inference")
    with tiny_champion_store(root) as uri:
        loaded = inference.load("models:/dimo@champion", device="cpu")
        Image.fromarray(moving_frames(1)[0]).save(root / "ref.png")  # 72 x 96
        (root / "bad.png").write_bytes(b"this is not a png")
        video_io.write_video(root / "drive16.mp4", moving_frames(11), 16)
        video_io.write_video(root / "drive24.mp4", moving_frames(14, seed=1), 24)
        video_io.write_video(root / "short.mp4", moving_frames(4), 16)
        yield {"root": root, "uri": uri, "model": loaded}


def _read(path):
    frames, fps = video_io.read_video(path)
    return frames.shape, fps


def test_frame_counts_rates_and_prompts():
    assert [inference.usable_frames(n, 33) for n in (5, 8, 9, 40)] == [5, 5, 9, 33]
    opts = inference.Options(max_frames=9)
    idx, fps = inference.driving_indices(Path("v.mp4"), 40, 30.0, opts)
    assert fps == 16.0 and len(idx) == 9 and idx[-1] == round(8 * 30 / 16)
    idx, fps = inference.driving_indices(Path("v.mp4"), 40, 16.2, opts)  # at the model's rate: frame by frame
    assert fps == 16.2 and list(idx) == list(range(9))
    assert inference.build_prompt(camera="Arc Left 30") == camera_vocabulary.prompt("arc_left_30", action="moves")
    assert inference.build_prompt(prompt="free text") == "free text"
    with pytest.raises(inference.InferenceError, match="unknown camera motion 'nope'"):
        inference.build_prompt(camera="nope")


def test_keypoint_files(tmp_path):
    hands = np.random.default_rng(0).random((9, 2, 21, 3)).astype(np.float32)
    np.save(tmp_path / "hands.npy", hands)
    got, wrists = inference.load_keypoints(tmp_path / "hands.npy", 9, 72, 96)
    assert np.array_equal(got, hands) and wrists is None
    label = label_format.make_label(9, "anny", height=36, width=48, keypoints2d_hand=hands,
                                    hand_valid=np.array([[True, False]] * 9))
    label_format.save_label(tmp_path / "label.npz", label)
    got, wrists = inference.load_keypoints(tmp_path / "label.npz", 9, 72, 96)  # label at half the video's size
    assert np.allclose(got[:, 0, :, :2], 2 * hands[:, 0, :, :2]) and (got[:, 1, :, 2] == 0).all()
    assert wrists.shape == (9, 2, 3) and (wrists[..., 2] == 0).all()  # label frames not valid: no wrist box
    with pytest.raises(inference.InferenceError, match=r"hands.npy: hand keypoints \(9, 2, 21, 3\) do not match"):
        inference.load_keypoints(tmp_path / "hands.npy", 11, 72, 96)


def test_animate_follows_the_driving_video_rate_and_the_reference_size(store):
    root, dimo = store["root"], store["model"]
    hands = np.zeros((11, 2, 21, 3), np.float32)
    hands[..., 0], hands[..., 1], hands[..., 2] = 20.0, 15.0, 0.9  # a visible "hand" at (20, 15) ...
    label = label_format.make_label(11, "anny", height=36, width=48, keypoints2d_hand=hands,  # ... at half size
                                    hand_valid=np.ones((11, 2), bool))
    label_format.save_label(root / "drive16_label.npz", label)
    res = dimo.animate(root / "ref.png", root / "drive16.mp4", root / "a16.mp4", camera="zoom_in",
                       keypoints=root / "drive16_label.npz", options=OPTS)
    assert _read(res.path) == ((9, 32, 48, 3), 16.0)  # 11 frames cut to 1 + 4k
    assert res.info["hand_keypoints"] and res.prompt.endswith("The camera slowly zooms in on the subject.")
    res = dimo.animate(root / "ref.png", root / "drive24.mp4", root / "a24.mp4", prompt="A dancer spins.",
                       options=OPTS)
    assert _read(res.path) == ((9, 32, 48, 3), 16.0)  # 14 frames at 24 fps = 9 at the model's 16 fps
    assert not res.info["hand_keypoints"]  # no keypoints: the hand encoder got its fallback crops


def test_a_pose_driven_model_takes_the_pose_of_a_pseudo_label(store):
    """The "w/ SMPL ctrl." ablation variant is driven by the label's body pose, not by pixels."""
    from dimo.models import DimoModel, LatentCodec, configs
    from dimo.models.text_encoder import from_spec

    root = store["root"]
    torch.manual_seed(0)
    model = DimoModel(configs.get("tiny", variant="smpl_control", text_in_dim=384))
    with torch.no_grad():  # the motion cross-attention starts at zero (stock output): give it a voice
        for name, param in model.generator.named_parameters():
            if "motion" in name:
                param.normal_(0, 0.05)
    dimo = inference.Dimo(model, LatentCodec.tiny(), from_spec(
        {"kind": "minilm", "path": None, "max_length": 16}), "cpu", source="smpl")
    with pytest.raises(inference.InferenceError, match="smpl: this model .smpl_control. is driven by body pose"):
        dimo.animate(root / "ref.png", root / "drive16.mp4", options=OPTS)
    theta = np.zeros((11, 21, 6), np.float32)
    theta[..., 0], theta[..., 4] = 1.0, 1.0  # identity rotations in 6D
    label = label_format.make_label(11, "anny", height=72, width=96, theta_body=theta)
    label_format.save_label(root / "pose_label.npz", label)
    still = dimo.animate(root / "ref.png", root / "drive16.mp4", keypoints=root / "pose_label.npz", options=OPTS)
    theta[5:, 3, :] = [0.0, 1.0, 0.0, -1.0, 0.0, 0.0]  # one joint turns 90 degrees from frame 5 on
    label_format.save_label(root / "pose_label.npz", label_format.make_label(11, "anny", height=72, width=96,
                                                                             theta_body=theta))
    moved = dimo.animate(root / "ref.png", root / "drive16.mp4", keypoints=root / "pose_label.npz", options=OPTS)
    assert still.frames.shape == moved.frames.shape == (9, 32, 48, 3)
    assert not np.array_equal(still.frames, moved.frames)  # the pose, not the pixels, changed the output


def test_novel_view_repeats_the_image_under_a_camera_prompt(store):
    root = store["root"]
    folder = store["root"] / ".cache" / "registry"  # the downloaded version: a local model folder works too
    local = inference.load(str(next(folder.glob("dimo/*/artifacts"))), device="cpu")
    res = local.novel_view(root / "ref.png", root / "nv.mp4", camera="arc_left_30", num_frames=6, options=OPTS)
    assert _read(res.path) == ((5, 32, 48, 3), 16.0)
    assert "arcs 30 degrees to the left" in res.prompt and "stands still" in res.prompt


def test_stabilize_uses_the_first_frame_and_a_static_camera(store):
    root = store["root"]
    res = store["model"].stabilize(root / "drive24.mp4", root / "st.mp4", options=OPTS)
    assert _read(res.path) == ((9, 32, 48, 3), 16.0)
    assert res.prompt == camera_vocabulary.prompt("static", action="moves")
    assert res.prompt.endswith("The camera remains static.")


def _dit_inputs(dimo, run) -> list[torch.Tensor]:
    """Every hidden-states tensor the generator is called with while `run()` samples (a forward pre-hook)."""
    seen = []
    handle = dimo.model.generator.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen


def _encoded(dimo, frame: np.ndarray) -> torch.Tensor:
    """The reference latent of one RGB frame at the output size (32x48), encoded by the model's codec."""
    H, W = video_io.target_size(*frame.shape[:2], AREA, 16)
    rgb = torch.from_numpy(video_io.resize_frames(frame[None], H, W)[0]).permute(2, 0, 1)[None].float()
    return dimo.codec.encode_image(rgb / 127.5 - 1.0)  # (1, 16, 1, h, w)


def _reference_channels(x: torch.Tensor) -> torch.Tensor:
    """DiT input [noisy (16) | mask (4) | reference (16)] -> its reference channels; checks the frame-0 mask."""
    assert x.shape[1] == 36 and (x[:, 16:20, 0] == 1).all() and (x[:, 16:20, 1:] == 0).all()
    return x[:, 20:]


def test_the_reference_image_is_latent_frame_0_of_the_conditioning(store):
    """animate conditions every sampling step on the given image (not on the driving video's first frame) as
    latent frame 0, zeros after; stabilize conditions on the first driving frame."""
    root, dimo = store["root"], store["model"]
    reference = inference.read_image(root / "ref.png")
    drive16, drive24 = (inference.read_video(root / name)[0] for name in ("drive16.mp4", "drive24.mp4"))
    want = _encoded(dimo, reference)
    assert not torch.allclose(want, _encoded(dimo, drive16[0]), atol=1e-3)  # the two candidates differ
    seen = _dit_inputs(dimo, lambda: dimo.animate(root / "ref.png", root / "drive16.mp4", options=OPTS))
    assert len(seen) == OPTS.num_steps  # one (batched) generator call per Euler step
    for x in seen:
        ref = _reference_channels(x)
        assert torch.allclose(ref[:, :, :1], want.expand(len(x), -1, -1, -1, -1), atol=1e-5)
        assert (ref[:, :, 1:] == 0).all()
    seen = _dit_inputs(dimo, lambda: dimo.stabilize(root / "drive24.mp4", options=OPTS))
    want = _encoded(dimo, drive24[0])
    for x in seen:
        assert torch.allclose(_reference_channels(x)[:, :, :1], want.expand(len(x), -1, -1, -1, -1), atol=1e-5)


def _cli(args, store, timeout=300):
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    return subprocess.run([str(VENV_BIN / "python"), "-m", "dimo.inference_cli", *args], cwd=store["root"], env=env,
                          capture_output=True, check=False, text=True, timeout=timeout)


def test_cli_animates_with_the_champion_alias(store):
    out = _cli(["animate", "ref.png", "drive24.mp4", "-o", "cli.mp4", "--camera", "arc_right_45", "--steps", "2",
                "--target-area", str(AREA), "--max-frames", "7", "--seed", "3"], store)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cli.mp4: 5 frames, 48x32, 16 fps" in out.stdout  # 9 frames at 16 fps, at most 7 -> 1 + 4k = 5
    assert _read(store["root"] / "cli.mp4") == ((5, 32, 48, 3), 16.0)
    assert "sampling" in out.stderr  # the progress bar over sampling steps


@pytest.mark.parametrize("args, message", [
    (["animate", "bad.png", "drive16.mp4"], "bad.png: not a readable image"),
    (["novel-view", "missing.png", "--camera", "static"], "missing.png: no such image file"),
    (["animate", "ref.png", "short.mp4"], "short.mp4: video too short: 4 frame(s), at least 5 needed"),
    (["novel-view", "ref.png", "--camera", "barrel_roll"], "unknown camera motion 'barrel_roll'; known keys: static"),
    (["animate", "ref.png", "drive16.mp4", "--model", "models:/dimo@nope"],
     "models:/dimo@nope: unknown registered model or alias"),
])
def test_cli_errors_are_one_line_with_exit_code_2(store, args, message):
    out = _cli(args, store)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("dimo ")]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr
