"""dimo.previews on a real MLflow store: beside every mp4 artifact an animated, looping GIF and a PNG contact sheet
(frames across time, top to bottom), logged once; a broken video gets none and does not stop the run."""

from __future__ import annotations

import mlflow
import numpy as np
from PIL import Image

from dimo import previews, video_io
from tests.conftest import moving_frames


def _artifact_dir(run_id: str) -> str:
    return mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")


def test_every_mp4_gets_a_looping_gif_and_a_contact_sheet_once(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("previews", artifact_location=str(tmp_path / "artifacts"))
    frames = moving_frames(17, height=64, width=256)
    video_io.write_video(tmp_path / "grid.mp4", frames, 8)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifact(str(tmp_path / "grid.mp4"), "samples/stage1")
        mlflow.log_artifact(str(tmp_path / "broken.mp4"))
        assert previews.log_missing_previews() == ["broken.mp4", "samples/stage1/grid.mp4"]
        assert previews.log_missing_previews() == ["broken.mp4"]  # the grid's previews exist: not made again
    root = _artifact_dir(run.info.run_id)
    gif = Image.open(f"{root}/samples/stage1/grid{previews.GIF_SUFFIX}")
    assert gif.format == "GIF" and gif.n_frames == 17 and gif.info["loop"] == 0
    assert gif.size == (512, 128)  # a 256 px wide toy grid shown at twice its size
    gif.seek(8)
    middle = np.asarray(gif.convert("RGB"), dtype=float)[::2, ::2]
    assert np.abs(middle - frames[8]).mean() < 12  # the frames themselves, in order (palette + H.264 error)
    sheet = Image.open(f"{root}/samples/stage1/grid{previews.SHEET_SUFFIX}")
    assert sheet.format == "PNG" and sheet.size == (256, 4 * 64)
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert not any(p.startswith("broken.") and p != "broken.mp4" for p in files)
