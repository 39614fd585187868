"""The latent cache as WebDataset shards (`dimo.cache_shards`): an exact round trip on local disk and an fsspec
URL, the manifest's hashes, the training loader reading shards with workers, a corrupt shard named."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest
import torch

from dimo import cache_shards
from dimo.training.batches import PairBatches, clip_shapes
from dimo.training.data_loader import LoaderSettings
from tests.test_loader import MIX, assert_same, clip_set, drained, write_partitions


def _exact(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].contiguous().numpy().tobytes() == b[k].numpy().tobytes(), k


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_shards_round_trip_the_cache_exactly(tmp_path, where):
    _, cache = clip_set(groups=2)
    lazy = write_partitions(cache, tmp_path / "latents")  # as the catalog hands the cache over
    url = str(tmp_path / "shards") if where == "disk" else f"memory://shards-{tmp_path.name}"
    manifest = cache_shards.write_shards(lazy, url, max_shard_bytes=60_000)
    assert len(manifest["shards"]) > 1 and set(manifest["clips"]) == set(cache)
    back = cache_shards.ShardCache(url)
    assert set(back) == set(cache) and len(back) == len(cache)
    for cid, tensors in cache.items():
        _exact(tensors, back[cid]())
        assert clip_shapes(back[cid]) == {k: tuple(v.shape) for k, v in tensors.items()}  # header only
    assert cache_shards.verify(url) == manifest == cache_shards.read_manifest(f"{url}/manifest.json")


def test_the_manifest_hashes_every_shard_and_clip(tmp_path):
    _, cache = clip_set(groups=1)
    manifest = cache_shards.write_shards(cache, str(tmp_path), max_shard_bytes=60_000)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    for shard in manifest["shards"]:
        data = (tmp_path / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        with tarfile.open(tmp_path / shard["name"]) as tar:  # a plain WebDataset tar: <clip id>.safetensors
            for member in tar.getmembers():
                cid = member.name.removesuffix(".safetensors")
                entry = manifest["clips"][cid]
                assert entry["shard"] == shard["name"] and entry["size"] == member.size == entry["bytes"]
                assert hashlib.sha256(tar.extractfile(member).read()).hexdigest() == entry["sha256"]
    # Same cache, same bytes: the shards are reproducible (DVC sees no change on a rerun).
    again = cache_shards.write_shards(cache, str(tmp_path / "again"), max_shard_bytes=60_000)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]


def test_the_training_loader_reads_shards_with_workers(tmp_path):
    pairs, cache = clip_set(groups=3)
    cache_shards.write_shards(cache, str(tmp_path / "shards"), max_shard_bytes=100_000)
    settings = LoaderSettings(cache_shards=str(tmp_path / "shards"), num_workers=2)
    assert isinstance(settings.cache(cache), cache_shards.ShardCache)
    from_files = PairBatches(pairs, cache, MIX, 2, seed=0, accumulation=2)
    from_shards = PairBatches(pairs, settings.cache({}), MIX, 2, seed=0, accumulation=2)
    alone = drained(from_files, 0, 0, 4)
    streamed = drained(from_shards, 0, 0, 4, num_workers=2)
    assert len(alone) == len(streamed) == 8
    for (_, _, a), (_, _, b) in zip(alone, streamed, strict=True):
        assert_same(a, b)


def test_a_corrupt_shard_is_named(tmp_path):
    _, cache = clip_set(groups=1)
    manifest = cache_shards.write_shards(cache, str(tmp_path), max_shard_bytes=60_000)
    shard = manifest["shards"][0]["name"]
    victim = next(c for c, e in manifest["clips"].items() if e["shard"] == shard)
    path = tmp_path / shard
    data = bytearray(path.read_bytes())
    data[manifest["clips"][victim]["offset"] + 100] ^= 0xFF  # one flipped byte inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(cache_shards.CorruptShardError) as err:
        cache_shards.ShardCache(str(tmp_path))[victim]()
    assert str(path) in str(err.value) and victim in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(cache_shards.CorruptShardError, match=shard):
        cache_shards.verify(str(tmp_path))
    other = next(c for c, e in manifest["clips"].items() if e["shard"] != shard)
    assert torch.equal(cache_shards.ShardCache(str(tmp_path))[other]()["latents"], cache[other]["latents"])


@pytest.mark.slow
def test_the_preprocess_pipeline_writes_shards_equal_to_the_cache(smoke_chain):
    from safetensors.torch import load_file

    model_input = smoke_chain / "data/05_model_input"
    manifest = cache_shards.verify(str(model_input / "latent_shards"))
    assert json.loads((model_input / "latent_shards.json").read_text()) == manifest  # the catalog's record
    files = sorted((model_input / "latents").glob("*.safetensors"))
    assert files and set(manifest["clips"]) == {f.stem for f in files}
    back = cache_shards.ShardCache(str(model_input / "latent_shards"))
    for f in files:
        _exact(load_file(f), back[f.stem]())
