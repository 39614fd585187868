import numpy as np
import pytest

from dimo import video_io
from tests.conftest import moving_frames


def test_write_read_round_trip_keeps_shape_fps_and_content(tmp_path):
    frames = moving_frames(17, 64, 80)
    path = video_io.write_video(tmp_path / "a.mp4", frames, 16)
    out, fps = video_io.read_video(path)
    assert out.shape == frames.shape and fps == pytest.approx(16)
    assert np.abs(out.astype(float) - frames).mean() < 6  # lossy codec, small error


def test_same_frames_give_identical_bytes(tmp_path):
    frames = moving_frames(9, 32, 32)
    a = video_io.write_video(tmp_path / "a.mp4", frames, 16).read_bytes()
    b = video_io.write_video(tmp_path / "b.mp4", frames, 16).read_bytes()
    assert a == b


def test_lossless_videos_decode_bit_exact_and_reproducibly(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)  # the hardest case
    a = video_io.write_video(tmp_path / "a.mp4", noise, 16, lossless=True)
    out, fps = video_io.read_video(a)
    assert np.array_equal(out, noise) and fps == pytest.approx(16)
    assert a.read_bytes() == video_io.write_video(tmp_path / "b.mp4", noise, 16, lossless=True).read_bytes()
    lossy = video_io.read_video(video_io.write_video(tmp_path / "c.mp4", noise, 16))[0]
    assert not np.array_equal(lossy, noise)  # the default H.264 is not: scored videos must be lossless


@pytest.mark.parametrize("content,reason", [(b"", "cannot decode"), (b"not a video at all" * 20, "cannot decode")])
def test_unreadable_files_name_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(video_io.VideoReadError, match=rf"bad\.mp4.*{reason}"):
        video_io.read_video(path)


def test_target_size_keeps_area_and_aspect():
    h, w = video_io.target_size(1080, 1920, 480 * 854)
    assert h % 16 == 0 and w % 16 == 0
    assert abs(h * w / (480 * 854) - 1) < 0.05 and abs(w / h - 1920 / 1080) < 0.05


def test_resample_and_windows():
    idx = video_io.resample_indices(60, 30, 16)  # 2 s at 30 fps -> 32 frames at 16 fps
    assert len(idx) == 32 and idx[0] == 0 and idx[-1] <= 59 and np.all(np.diff(idx) > 0)
    assert video_io.window_starts(40, 17, 17) == [0, 17]
    assert video_io.window_starts(16, 17, 17) == []
    assert video_io.window_starts(100, 17, 17, max_windows=2) == [0, 17]


def test_resize_is_antialiased_and_exact_size():
    frames = moving_frames(3, 72, 96)
    out = video_io.resize_frames(frames, 48, 64)
    assert out.shape == (3, 48, 64, 3) and out.dtype == np.uint8
