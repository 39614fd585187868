"""The project's Kedro datasets (`dimo.datasets`): every optional dataset loads as None when its file or folder
does not exist (saying which path at INFO) and round-trips when present; the clip folders are looked up by clip id."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from dimo import clip_table, datasets
from tests.conftest import moving_frames


def _table() -> pd.DataFrame:
    return pd.DataFrame({"clip_id": ["a", "b"], "fps": [16.0, 8.0]})


# (dataset class, constructor kwargs for a path under tmp, data to save, how to compare what loads back)
OPTIONAL = {
    "parquet": (datasets.OptionalParquetDataset, lambda t: {"filepath": str(t / "x" / "t.parquet")}, _table(),
                lambda a, b: a.equals(b)),
    "csv": (datasets.OptionalCSVDataset, lambda t: {"filepath": str(t / "x" / "m.csv"), "save_args": {"index": False}},
            _table(), lambda a, b: a.equals(b)),
    "json": (datasets.OptionalJSONDataset, lambda t: {"filepath": str(t / "x" / "r.json")},
             {"run_id": "abc", "version": 3}, lambda a, b: a == b),
    "yaml": (datasets.OptionalYAMLDataset, lambda t: {"filepath": str(t / "x" / "best.yml")},
             {"study": "s", "geometric_loss": {"start": 0.5}}, lambda a, b: a == b),
    "partitioned": (datasets.OptionalPartitionedDataset,
                    lambda t: {"path": str(t / "x" / "gt"), "dataset": "dimo.datasets.NpzDataset",
                               "filename_suffix": ".npz"},
                    {"c1": {"k": np.arange(3)}, "c2": {"k": np.ones(2)}},
                    lambda a, b: sorted(a) == sorted(b) and all(np.array_equal(a[k]()["k"], b[k]["k"]) for k in b)),
}


@pytest.mark.parametrize("kind", sorted(OPTIONAL))
def test_optional_dataset_is_none_when_missing_and_round_trips(kind, tmp_path, caplog):
    cls, kwargs, data, same = OPTIONAL[kind]
    ds = cls(**kwargs(tmp_path))
    with caplog.at_level(logging.INFO, logger="dimo.datasets"):
        assert ds.load() is None
    assert str(tmp_path / "x") in caplog.text and "does not exist" in caplog.text  # says which path
    ds.save(data)
    assert same(cls(**kwargs(tmp_path)).load(), data)
    assert same(ds.load(), data)  # the same instance sees what was written since it last looked


def test_empty_partition_folder_is_none(tmp_path):
    (tmp_path / "clips").mkdir()
    ds = datasets.OptionalPartitionedDataset(path=str(tmp_path / "clips"), dataset="dimo.datasets.VideoDataset",
                                             filename_suffix=".mp4")
    assert ds.load() is None


def test_there_is_no_absent_marker_any_more():
    assert not hasattr(datasets, "Absent")  # one missing value: None


def test_video_partitions_are_keyed_by_clip_id_and_carry_the_file_bytes(tmp_path):
    folder = datasets.OptionalPartitionedDataset(path=str(tmp_path / "clips"), dataset="dimo.datasets.VideoDataset",
                                                 filename_suffix=".mp4")
    frames = moving_frames(5, 32, 48)
    folder.save({"walk-w000": datasets.Video(frames, 16.0)})
    loaders = clip_table.clip_loaders(None, folder.load())  # no synthetic folder yet: None adds nothing
    video = clip_table.load_clip(loaders, "walk-w000")
    assert video.frames.shape == frames.shape and video.fps == pytest.approx(16.0)
    assert video.encoded == (tmp_path / "clips" / "walk-w000.mp4").read_bytes()
    with pytest.raises(clip_table.MissingClipError, match="'run-w000' has no file in the clip folders"):
        clip_table.load_clip(loaders, "run-w000")
    with pytest.raises(clip_table.MissingClipError, match=r"1 clip\(s\).*\['run-w000'\]"):
        clip_table.check_clips(["walk-w000", "run-w000"], loaders)
    # Later folders win a clip id, as in {**synthetic, **ingested}.
    assert clip_table.clip_loaders({"a": 1, "b": 2}, None, {"b": 3}) == {"a": 1, "b": 3}


def test_unreadable_clip_raises_the_read_error_not_kedros_wrapper(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "bad.mp4").write_bytes(b"not a video" * 10)
    folder = datasets.OptionalPartitionedDataset(path=str(tmp_path / "clips"), dataset="dimo.datasets.VideoDataset",
                                                 filename_suffix=".mp4")
    from dimo import video_io

    with pytest.raises(video_io.VideoReadError, match="bad.mp4"):
        clip_table.load_clip(folder.load(), "bad")


def test_npz_and_label_store_datasets(tmp_path):
    arrays = {"a": np.arange(4, dtype=np.float32), "name": np.array("x")}
    ds = datasets.NpzDataset(filepath=str(tmp_path / "g.npz"))
    ds.save(arrays)
    back = ds.load()
    assert set(back) == {"a", "name"} and np.array_equal(back["a"], arrays["a"])
    first = (tmp_path / "g.npz").read_bytes()
    ds.save(arrays)
    assert (tmp_path / "g.npz").read_bytes() == first  # byte-reproducible

    from dimo.labelling.labeller import LabelStore

    store = datasets.LabelStoreDataset(path=str(tmp_path / "store")).load()
    assert isinstance(store, LabelStore) and (tmp_path / "store").is_dir()
    assert store.path("k") == tmp_path / "store" / "k.npz" and not store.has("k")


def test_the_latent_cache_keeps_named_files_writes_new_ones_and_drops_the_rest(tmp_path, caplog):
    import torch

    folder = str(tmp_path / "latents")

    def cache():
        return datasets.LatentCacheDataset(path=folder, dataset="dimo.datasets.SafetensorsDataset",
                                           filename_suffix=".safetensors")

    keys = datasets.LatentCacheKeysDataset(folder)
    assert keys.load() == {}  # a first run: no folder yet
    cache().save({"a": {"x": torch.ones(2), "cache_key": "ka"}, "b": lambda: {"x": torch.zeros(2), "cache_key": "kb"},
                  "c": {"x": torch.zeros(3)}})
    assert keys.load() == {"a": "ka", "b": "kb", "c": None}  # the key is header metadata, never a tensor
    assert set(cache().load()["a"]()) == {"x"}
    a_file = tmp_path / "latents" / "a.safetensors"
    written = a_file.stat().st_mtime_ns
    b_file = tmp_path / "latents" / "b.safetensors"
    b_file.write_bytes(b_file.read_bytes()[:-1])  # truncated: its header no longer covers the file
    with caplog.at_level(logging.WARNING):
        assert keys.load() == {"a": "ka", "c": None}
    assert str(b_file) in caplog.text and "encoded again" in caplog.text
    cache().save({"a": None, "b": {"x": torch.full((2,), 5.0), "cache_key": "kb2"}})  # None: keep as it is
    assert keys.load() == {"a": "ka", "b": "kb2"} and a_file.stat().st_mtime_ns == written
    assert torch.equal(cache().load()["b"]()["x"], torch.full((2,), 5.0))
