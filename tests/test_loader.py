"""The training data loader (`dimo.training.data_loader`): the same micro-batches as `PairBatches.batch`, in the
same order, with or without worker processes and from any resume step; size buckets that make micro-batches > 1
possible over clips of several sizes; memory that does not grow with the clips read; and an exact resume of a real
stage with workers."""

from __future__ import annotations

import shutil
import weakref
from collections import Counter

import pandas as pd
import pytest
import torch

from dimo.datasets import SafetensorsDataset
from dimo.training import mixtures
from dimo.training.batches import PairBatches, clip_shapes, collate
from dimo.training.data_loader import LoaderSettings, micro_batches
from dimo.training.nodes import run_stage
from tests.test_checkpoints import MANIFEST, _register_base, _weights, store, tiny_stage_inputs  # noqa: F401

SIZES = [(8, 8), (6, 10)]  # latent (h, w) of two aspect ratios; driving frames follow (x 8)


def clip(seed: int, size=(8, 8), frames: int = 5) -> dict:
    """A latent-cache entry (preprocess's fields and dtypes), small; content from `seed`."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return {"latents": torch.randn(16, 2, h, w, generator=g), "text_embeddings": torch.randn(4, 8, generator=g),
            "text_mask": torch.ones(4, dtype=torch.uint8),
            "driving_frames": torch.randint(0, 256, (frames, 3, h * 8, w * 8), generator=g, dtype=torch.uint8),
            "hand_keypoints": torch.rand(frames, 2, 21, 3, generator=g),
            "wrist_keypoints": torch.rand(frames, 2, 3, generator=g),
            "pose_targets": torch.randn(frames, 306, generator=g), "pose_valid": torch.ones(frames, 306)}


def clip_set(groups: int, views: int = 3, singles: int = 4, mixed: bool = True) -> tuple[pd.DataFrame, dict]:
    """Stage-2-like pairs (reconstruction of single views, cross-view within groups) and their cache entries;
    with `mixed`, every other group and single view has the second size."""
    cache, rows = {}, []
    for s in range(singles):
        cid = f"s{s}"
        cache[cid] = clip(len(cache), SIZES[s % 2 if mixed else 0])
        rows.append(("reconstruction", cid, cid, cid))
    for g in range(groups):
        ids = [f"g{g}v{v}" for v in range(views)]
        for cid in ids:
            cache[cid] = clip(len(cache), SIZES[g % 2 if mixed else 0])
        rows += [("cross_view", a, b, f"g{g}") for a in ids for b in ids if a != b]
    return pd.DataFrame(rows, columns=["kind", "driving_clip_id", "target_clip_id", "group_id"]), cache


MIX = {"reconstruction": 0.5, "cross_view": 0.5}


def write_partitions(cache: dict, folder) -> dict:
    """The cache as the catalog hands it over: clip id -> the lazy `load` of a safetensors partition."""
    out = {}
    for cid, tensors in cache.items():
        dataset = SafetensorsDataset(str(folder / f"{cid}.safetensors"))
        dataset.save(tensors)
        out[cid] = dataset.load
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def drained(batches: PairBatches, rank: int, start: int, steps: int, **loader) -> list:
    return list(micro_batches(batches, rank, start, steps, LoaderSettings(**loader)))


# ---------------------------------------------------------------- the same batches, the same order
@pytest.mark.parametrize("world_size,accumulation,micro", [(1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)])
def test_the_loader_yields_pair_batches_in_order_from_any_step(world_size, accumulation, micro):
    pairs, cache = clip_set(groups=2, mixed=False)
    batches = PairBatches(pairs, cache, MIX, micro, seed=3, world_size=world_size, accumulation=accumulation)
    for rank in range(world_size):
        got = drained(batches, rank, 0, 5)
        assert [(s, m) for s, m, _ in got] == [(s, m) for s in range(5) for m in range(accumulation)]
        for step, m, batch in got:
            assert_same(batch, batches.batch(step, m, rank))
            # one clip size: the samples are today's draw, global sample n = step x global batch + offset
            first = step * micro * accumulation * world_size + (m * world_size + rank) * micro
            assert batches.sample_ids(step, m, rank) == mixtures.sample_indices(pairs, MIX, first, micro, 3)
        resumed = drained(batches, rank, 3, 5)  # a run resumed at step 3 continues the same sequence
        assert [(s, m) for s, m, _ in resumed] == [(s, m) for s, m, _ in got if s >= 3]
        for (_, _, a), (_, _, b) in zip(resumed, [g for g in got if g[0] >= 3]):
            assert_same(a, b)


def test_workers_give_the_same_batches_as_the_training_process(tmp_path):
    pairs, cache = clip_set(groups=4)
    lazy = write_partitions(cache, tmp_path)
    batches = PairBatches(pairs, lazy, MIX, 2, seed=0, world_size=2, accumulation=2)
    alone = drained(batches, 1, 1, 6)
    with_workers = drained(batches, 1, 1, 6, num_workers=2, prefetch_factor=3)
    assert [(s, m) for s, m, _ in with_workers] == [(s, m) for s, m, _ in alone] and len(alone) == 10
    for (_, _, a), (_, _, b) in zip(alone, with_workers):
        assert_same(a, b)


def test_the_clip_lru_gives_the_same_batches():
    pairs, cache = clip_set(groups=3)
    fresh = PairBatches(pairs, cache, MIX, 2, seed=1, accumulation=2)
    kept = PairBatches(pairs, cache, MIX, 2, seed=1, accumulation=2, keep_clips=3)
    for (_, _, a), (_, _, b) in zip(drained(fresh, 0, 0, 6), drained(kept, 0, 0, 6)):
        assert_same(a, b)


def test_making_the_loader_leaves_the_global_rng_alone():
    """The model's draws without a generator use the global RNG: a DataLoader iterator seeds its workers from
    its own generator, so the default run's numbers do not move."""
    pairs, cache = clip_set(groups=2, mixed=False)
    batches = PairBatches(pairs, cache, MIX, 1, seed=0)
    state = torch.get_rng_state()
    next(micro_batches(batches, 0, 0, 2, LoaderSettings()))
    assert torch.equal(torch.get_rng_state(), state)


def test_loader_settings_from_parameters():
    assert LoaderSettings.from_params(None) == LoaderSettings()
    assert LoaderSettings.from_params({"num_workers": 4}).num_workers == 4
    with pytest.raises(ValueError, match="pin_memory must be true, false or auto"):
        LoaderSettings.from_params({"pin_memory": "yes"})
    with pytest.raises(TypeError):
        LoaderSettings.from_params({"workers": 4})  # a misspelt key is an error, not a silent default


# ---------------------------------------------------------------- size buckets
def test_micro_batches_of_two_over_mixed_sizes_stack_one_size_deterministically(tmp_path):
    pairs, cache = clip_set(groups=6)
    with pytest.raises(ValueError, match="mixes clips of different sizes"):  # why buckets are needed
        collate([PairBatches(pairs, cache, MIX, 1, 0).example("s0", "s0"),
                 PairBatches(pairs, cache, MIX, 1, 0).example("s1", "s1")])
    batches = PairBatches(pairs, write_partitions(cache, tmp_path), MIX, 2, seed=5, accumulation=2)
    again = PairBatches(pairs, cache, MIX, 2, seed=5, accumulation=2)  # header shapes = loaded shapes
    ids = {(s, m): batches.sample_ids(s, m, 0) for s in range(200) for m in range(2)}
    assert ids == {key: again.sample_ids(*key, 0) for key in ids}
    kinds, used = Counter(), Counter()
    for (step, micro), rows in ids.items():
        assert len({int(batches.bucket_of[r]) for r in rows}) == 1  # one size per micro-batch
        first = (step * 2 + micro) * 2
        for n, row in enumerate(rows, start=first):  # every bucket has both kinds: each sample keeps its kind
            assert pairs["kind"].iat[row] == mixtures.kind_of_sample(n, MIX)
            kinds[pairs["kind"].iat[row]] += 1
        used.update(rows)
    assert kinds == {"reconstruction": 400, "cross_view": 400}
    assert len(used) == len(pairs)  # every pair of every bucket is drawn
    assert len(set(batches.bucket_of)) == 2
    # each bucket gets about the share of samples it would get without buckets (here: its share of each kind)
    per_bucket = Counter(int(batches.bucket_of[rows[0]]) for rows in ids.values())
    kinds_of = pairs["kind"].to_numpy()
    share = {b: sum(0.5 * ((batches.bucket_of == b) & (kinds_of == k)).sum() / (kinds_of == k).sum() for k in MIX)
             for b in (0, 1)}
    assert all(abs(per_bucket[b] / len(ids) - share[b]) < 0.08 for b in (0, 1)), (per_bucket, share)
    for _, _, batch in drained(batches, 0, 0, 8, num_workers=2):  # and they collate
        assert batch["target_latents"].shape[0] == 2 and batch["driving_frames"].shape[0] == 2


def test_a_bucket_without_a_kind_fills_it_with_its_first_samples_kind():
    """Single views of a size no rig has: their micro-batches cannot hold a cross-view pair of their size."""
    pairs, cache = clip_set(groups=2, singles=4)
    cache.update({f"g{g}v{v}": clip(100 + 3 * g + v, SIZES[0]) for g in range(2) for v in range(3)})
    batches = PairBatches(pairs, cache, MIX, 2, seed=0)
    lonely = {int(batches.bucket_of[r]) for r in range(len(pairs)) if pairs["driving_clip_id"].iat[r] in ("s1", "s3")}
    assert len(lonely) == 1 and len(set(batches.bucket_of)) == 2
    hits = 0
    for step in range(100):
        rows = batches.sample_ids(step, 0, 0)
        if int(batches.bucket_of[rows[0]]) in lonely:
            assert set(pairs["kind"].iloc[rows]) == {"reconstruction"}
            hits += 1
        collate([batches.example(pairs["driving_clip_id"].iat[r], pairs["target_clip_id"].iat[r]) for r in rows])
    assert hits > 0


def test_clip_shapes_come_from_the_safetensors_header(tmp_path):
    entry = clip(0, SIZES[1])
    lazy = write_partitions({"a": entry}, tmp_path)["a"]
    assert clip_shapes(lazy) == clip_shapes(entry) == {k: tuple(v.shape) for k, v in entry.items()}


# ---------------------------------------------------------------- memory
@pytest.mark.parametrize("keep_clips", [0, 8])
def test_clips_read_for_batches_are_not_kept(keep_clips):
    """PairBatches used to keep every clip it read: a real dataset (10^5 clips of ~12 MB) does not fit. Now at
    most `keep_clips` (the LRU) plus one micro-batch's clips are alive."""
    alive = weakref.WeakSet()
    pairs, cache = clip_set(groups=10, singles=10)

    def lazy(entry):
        def load():
            tensors = {k: v.clone() for k, v in entry.items()}  # a fresh read, as a file load is
            alive.add(tensors["latents"])
            return tensors
        return load

    batches = PairBatches(pairs, {c: lazy(e) for c, e in cache.items()}, MIX, 2, seed=0, accumulation=2,
                          keep_clips=keep_clips)
    read = set()
    for step, micro, batch in micro_batches(batches, 0, 0, 40, LoaderSettings()):
        read.update(pairs["target_clip_id"].iloc[batches.sample_ids(step, micro, 0)])
        del batch  # (refcounting frees a clip at once: no gc.collect needed, and it is slow here)
        assert len(alive) <= keep_clips + 4  # the LRU + one micro-batch's clips (driving + target, micro 2)
    assert len(read) >= 30  # ... while most of the 40 clips were read
    assert len(batches._kept) == keep_clips


# ---------------------------------------------------------------- exact resume through the loader, with workers
def test_a_stage_resumed_with_workers_reaches_the_uninterrupted_weights(store):  # noqa: F811
    pairs, cache, params = tiny_stage_inputs(store / "ckpt", steps=2)
    _register_base(0)
    model, _ = run_stage("stage1", pairs, cache, None, MANIFEST, {}, params)
    trained = _weights(model)
    ckpt = store / "ckpt" / "stage1"
    shutil.rmtree(ckpt / "step-00000002")  # killed after step 1
    (ckpt / "latest").write_text("step-00000001")
    params["loader"] = {"num_workers": 2, "prefetch_factor": 2}
    model, summary = run_stage("stage1", pairs, cache, None, MANIFEST, {}, params)
    assert summary["resumed_at"] == 1
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items()), "resumed weights differ"
