"""pseudo_label.runner: ray on a real local Ray cluster of 2 workers: the same labels and index rows as the
local runner, an actor killed mid-job costs nothing, a driver killed mid-job is continued by a re-run without
labelling any clip twice. Inputs: the smoke parameters and tiny clips (as tests/test_pseudo_label.py)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dimo import distributed, video_io
from dimo.datasets import Video
from dimo.labelling import label_format as lf
from dimo.labelling import labeller, quality, ray_labeller
from tests.test_pseudo_label import carphone_frames, smoke_params

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TIMING = ("detect_seconds", "fit_seconds")  # wall-clock fields: the only ones allowed to differ


def _read(path: Path) -> Video:  # VideoDataset.load without Kedro's wrapper: a bad file raises VideoReadError
    return Video(*video_io.read_video(path), encoded=path.read_bytes())


def clip_rows(root: Path) -> list[dict]:
    return [{"clip_id": p.stem, "path": p.name, "fps": 16.0, "num_frames": 9, "load": partial(_read, p)}
            for p in sorted(root.glob("*.mp4"))]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Six clips: four windows of a real person, a black clip, a file that is no video."""
    root = tmp_path_factory.mktemp("ray_clips")
    car = carphone_frames(24)
    car = car[:, : car.shape[1] // 2 * 2, : car.shape[2] // 2 * 2]
    for k in range(4):
        video_io.write_video(root / f"person{k}.mp4", car[k * 5: k * 5 + 9], 16.0)
    video_io.write_video(root / "black.mp4", np.zeros((9, 64, 64, 3), np.uint8), 16.0)
    (root / "broken.mp4").write_bytes(b"not a video at all")
    return root


@pytest.fixture(scope="module")
def params() -> dict:
    p = smoke_params()
    p["fit_batch_clips"] = 2
    p["ray"] = {"address": None, "num_cpus": 2, "actors": 2, "cpus_per_actor": 1}
    return p


@pytest.fixture(scope="module")
def cluster(params):
    with distributed.cluster(distributed.RaySettings.from_params(params["ray"])) as info:
        yield info


def _labels(index: pd.DataFrame) -> dict[str, dict]:
    return {r.clip_id: lf.load_label(r.label_path) for r in index.itertuples()}


def _gate(index: pd.DataFrame, params: dict) -> pd.DataFrame:
    frames = pd.concat([pd.DataFrame(labeller.frame_table_rows(r.clip_id, lf.load_label(r.label_path)))
                        for r in index.itertuples()], ignore_index=True)
    q, _ = quality.quarantine(index, frames, params["gates"])
    return q.sort_values(["clip_id", "check", "column"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def local_run(clips, params, tmp_path_factory):
    store = labeller.LabelStore(tmp_path_factory.mktemp("local_store"))
    return pd.DataFrame(labeller.label_clips(clip_rows(clips), store, params, progress=False))


def test_ray_writes_the_local_runners_labels(clips, params, local_run, cluster, tmp_path):
    store = labeller.LabelStore(tmp_path / "store")
    ray_index = pd.DataFrame(ray_labeller.label_clips(clip_rows(clips), store, params))
    assert cluster["started_here"] and not ray_index["cache_hit"].any()
    pd.testing.assert_frame_equal(ray_index.drop(columns=[*TIMING, "label_path"]),
                                  local_run.drop(columns=[*TIMING, "label_path"]))
    local, ray = _labels(local_run), _labels(ray_index)
    for cid, label in local.items():
        assert set(label) == set(ray[cid]), cid
        for key in set(label) - {"fit_seconds"}:  # the label's one timing field
            assert label[key].dtype == ray[cid][key].dtype and label[key].tobytes() == ray[cid][key].tobytes(), \
                (cid, key)
    # The same quarantine, reasons included: the black clip and the file that is no video.
    q_local, q_ray = _gate(local_run, params), _gate(ray_index, params)
    pd.testing.assert_frame_equal(q_local, q_ray)
    assert {"black", "broken"} <= set(q_ray["clip_id"]) and "person0" not in set(q_ray["clip_id"])
    # A second run labels nothing: every clip is in the content-hash cache.
    again = ray_labeller.label_clips(clip_rows(clips), store, params)
    assert all(r["cache_hit"] for r in again)


def test_a_killed_actor_costs_no_clip(clips, params, local_run, cluster, tmp_path):
    p = copy.deepcopy(params)
    p["fit_batch_clips"] = 1  # six batches: the pool has work left when one actor dies
    killed, seen = [], []

    def kill_first(progress: dict) -> None:
        seen.append(progress["pid"])
        if not killed:
            os.kill(progress["pid"], signal.SIGKILL)
            killed.append(progress["pid"])

    store = labeller.LabelStore(tmp_path / "store")
    index = pd.DataFrame(ray_labeller.label_clips(clip_rows(clips), store, p, on_batch=kill_first))
    assert killed and len(seen) == 6 and not index["cache_hit"].any()
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert len(list(store.root.glob("*.npz"))) == 6 and all(Path(x).is_file() for x in index["label_path"])
    # Nothing lost: the same quarantine as the local runner's (its batches differ, its verdicts do not).
    pd.testing.assert_frame_equal(_gate(index, p)[["clip_id", "check"]], _gate(local_run, p)[["clip_id", "check"]])


DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from dimo.labelling import labeller, ray_labeller
from tests.test_ray_runner import clip_rows
from tests.test_pseudo_label import smoke_params
p = smoke_params()
p["fit_batch_clips"] = 1
p["ray"] = {{"address": None, "num_cpus": 2, "actors": 1}}
ray_labeller.label_clips(clip_rows(Path({clips!r})), labeller.LabelStore({store!r}), p)
"""


def test_a_rerun_after_the_driver_died_labels_each_clip_once(clips, params, cluster, tmp_path):
    store = labeller.LabelStore(tmp_path / "store")
    script = DRIVER.format(root=str(ROOT), clips=str(clips), store=str(store.root))
    driver = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"})
    try:
        deadline = time.time() + 240
        while len(list(store.root.glob("*.npz"))) < 2 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
        driver.wait()
    before = {f.name: f.stat().st_mtime_ns for f in store.root.glob("*.npz")}
    assert 2 <= len(before) < 6, before
    p = copy.deepcopy(params)
    p["fit_batch_clips"] = 1
    rows = ray_labeller.label_clips(clip_rows(clips), store, p)
    labelled = [r for r in rows if not r["cache_hit"]]
    assert len(labelled) == 6 - len(before)  # only what the first run had not saved
    assert {Path(r["label_path"]).name for r in labelled}.isdisjoint(before)
    after = {f.name: f.stat().st_mtime_ns for f in store.root.glob("*.npz")}
    assert len(after) == 6 and {k: after[k] for k in before} == before  # none written twice, none lost


def _people(local_run: pd.DataFrame) -> pd.DataFrame:
    """The labelled person clips as a preprocess clip table."""
    people = local_run[local_run["clip_id"].str.startswith("person")]
    return people[["clip_id", "path", "label_path", "content_hash"]].assign(
        caption=[f"a person, take {i}" for i in range(len(people))], num_frames=9, height=144, width=176)


def test_ray_preprocess_writes_the_local_cache_entries(clips, params, local_run, cluster, tmp_path, request):
    import yaml

    from dimo.datasets import SafetensorsDataset
    from dimo.models import LatentCodec
    from dimo.pipelines.preprocess import nodes

    with open(ROOT / "conf" / "smoke" / "parameters_preprocess.yml") as f:
        pp = {**yaml.safe_load(f)["preprocess"], "device": "cpu", "batch_clips": 2, "ray": params["ray"]}
    table = _people(local_run)
    loaders = {cid: partial(_read, clips / f"{cid}.mp4") for cid in table["clip_id"]}
    codec = LatentCodec.tiny()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor (1 CPU): float reductions depend on the thread count
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    local_cache, local_manifest = nodes.encode_clips(table, loaders, None, codec, {}, pp)
    ray_cache, ray_manifest = nodes.encode_clips(table, loaders, None, codec, {}, {**pp, "runner": "ray"})
    assert ray_manifest == local_manifest and list(ray_cache) == list(local_cache)
    for cid in local_cache:  # the catalog's save of each entry: the same file bytes
        a, b = SafetensorsDataset(str(tmp_path / "a" / cid)), SafetensorsDataset(str(tmp_path / "b" / cid))
        a.save(local_cache[cid]())
        b.save(ray_cache[cid]())
        assert (tmp_path / "a" / cid).read_bytes() == (tmp_path / "b" / cid).read_bytes(), cid


def test_a_preprocess_rerun_encodes_only_what_is_missing_or_stale(clips, params, local_run, cluster, tmp_path,
                                                                  request):
    """The job dies while the cache is written; the re-run (Ray, then local) encodes only the clips without a
    valid entry: not written yet, truncated, caption changed. A clip no longer in the table loses its entry, and
    the cache ends byte-identical to one run from scratch."""
    import yaml
    from kedro.io import DatasetError

    from dimo.datasets import LatentCacheDataset, LatentCacheKeysDataset
    from dimo.models import LatentCodec
    from dimo.pipelines.preprocess import nodes

    with open(ROOT / "conf" / "smoke" / "parameters_preprocess.yml") as f:
        pp = {**yaml.safe_load(f)["preprocess"], "device": "cpu", "batch_clips": 1, "ray": params["ray"]}
    table, codec = _people(local_run), LatentCodec.tiny()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor (1 CPU), so Ray's entries equal the local ones byte for byte
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    reads: list[str] = []

    def loaders(fail: str | None = None) -> dict:
        def read(cid: str) -> Video:
            if cid == fail:
                raise OSError(f"{cid}: the job died here")
            reads.append(cid)
            return _read(clips / f"{cid}.mp4")
        return {cid: partial(read, cid) for cid in table["clip_id"]}

    def run(root: Path, clip_table: pd.DataFrame, fail: str | None = None, **extra) -> list[str]:
        reads.clear()
        cache = LatentCacheDataset(path=str(root), dataset="dimo.datasets.SafetensorsDataset",
                                   filename_suffix=".safetensors")
        entries, _ = nodes.encode_clips(clip_table, loaders(fail), None, codec, LatentCacheKeysDataset(str(root))
                                        .load(), {**pp, **extra})
        cache.save(entries)
        return sorted(reads)

    fresh, cached = tmp_path / "fresh", tmp_path / "cached"
    ids = sorted(table["clip_id"])
    assert run(fresh, table) == ids
    with pytest.raises(DatasetError, match="the job died here"):  # saved in clip-id order: two written first
        run(cached, table, fail=ids[2])
    assert sorted(p.stem for p in cached.glob("*.safetensors")) == ids[:2]
    assert run(cached, table, runner="ray") == ids[2:]  # the rest, over the Ray pool
    assert run(cached, table) == []
    before = {p.name: p.stat().st_mtime_ns for p in cached.glob("*.safetensors")}
    victim = cached / f"{ids[0]}.safetensors"
    victim.write_bytes(victim.read_bytes()[:-3])  # truncated: its header no longer covers the file
    recaptioned = table.assign(caption=np.where(table["clip_id"] == ids[1], "a person, retold", table["caption"]))
    assert run(cached, recaptioned) == ids[:2]
    assert run(fresh, recaptioned) == [ids[1]]
    dropped = recaptioned[recaptioned["clip_id"] != ids[3]]
    assert run(cached, dropped) == [] and run(fresh, dropped) == []
    after = {p.name: p.stat().st_mtime_ns for p in cached.glob("*.safetensors")}
    assert sorted(after) == [f"{c}.safetensors" for c in ids[:3]]
    assert after[f"{ids[2]}.safetensors"] == before[f"{ids[2]}.safetensors"]  # kept, never rewritten
    for name in after:
        assert (cached / name).read_bytes() == (fresh / name).read_bytes(), name
