"""The latent cache as WebDataset shards: tar files of one `<clip_id>.safetensors` member per clip, on local
disk or any fsspec URL (s3://, gs://, memory://, ...), and a JSON manifest naming every clip's shard, byte
offset, size and sha256 (and every shard's size and sha256). The manifest is a DVC output (docs/ray.md).

Readers never copy the cache: `ShardCache` maps clip id -> a loader that reads that clip's bytes by range from
its shard (each call opens the shard, so DataLoader workers share nothing) and checks them against the
manifest, so a corrupt or truncated shard is a one-line error naming the shard. Shards are plain WebDataset tars
(`webdataset.WebDataset(urls)` streams them too).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping

import fsspec

FORMAT = "dimo-latent-shards/1"
MANIFEST = "manifest.json"


class CorruptShardError(ValueError):
    """A shard whose bytes do not match the manifest; the message names the shard."""


def _join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry_bytes(entry: Callable[[], dict] | dict) -> bytes:
    from safetensors.torch import save

    tensors = entry() if callable(entry) else entry
    return save({k: v.contiguous() for k, v in sorted(tensors.items())})


def _close_shard(tmp: str, name: str, url: str, fs, manifest: dict) -> None:
    """Record the members' data offsets (read back from the finished tar), then upload it."""
    with tarfile.open(tmp) as tar:
        for member in tar.getmembers():
            clip_id = member.name.rsplit(".", 1)[0]
            manifest["clips"][clip_id].update(shard=name, offset=member.offset_data, size=member.size)
    with open(tmp, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    manifest["shards"].append({"name": name, "bytes": os.path.getsize(tmp), "sha256": digest})
    fs.put_file(tmp, _join(url, name))
    os.remove(tmp)


def write_shards(entries: Mapping[str, Callable[[], dict] | dict], url: str,
                 max_shard_bytes: int = 256 * 2**20) -> dict:
    """Write every cache entry (lazy loaders or dicts of tensors, one at a time) into shards of at most about
    `max_shard_bytes` under `url`, then `url/manifest.json`; returns the manifest. Entries go in clip id order."""
    import webdataset as wds

    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    manifest: dict = {"format": FORMAT, "url": url, "shards": [], "clips": {}}
    tar, tmp, size = None, None, 0
    for clip_id in sorted(entries):
        if "/" in clip_id or clip_id.startswith("."):
            raise ValueError(f"cache shards: clip id {clip_id!r} cannot name a tar member")
        data = _entry_bytes(entries[clip_id])
        if tar is not None and size + len(data) > max_shard_bytes:
            tar.close()
            _close_shard(tmp, f"shard-{len(manifest['shards']):06d}.tar", root, fs, manifest)
            tar = None
        if tar is None:
            fd, tmp = tempfile.mkstemp(suffix=".tar")
            tar, size = wds.TarWriter(os.fdopen(fd, "wb"), mtime=0.0), 0  # mtime 0: same cache, same bytes
        tar.write({"__key__": clip_id, "safetensors": data})
        manifest["clips"][clip_id] = {"bytes": len(data), "sha256": _sha256(data)}
        size += len(data)
    if tar is not None:
        tar.close()
        _close_shard(tmp, f"shard-{len(manifest['shards']):06d}.tar", root, fs, manifest)
    with fs.open(_join(root, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def read_manifest(url: str) -> dict:
    """The manifest of the shards under `url` (or of the manifest file `url` itself)."""
    path = url if url.endswith(".json") else _join(url, MANIFEST)
    with fsspec.open(path, "r") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a latent shard manifest (format {manifest.get('format')!r})")
    return manifest


class _ShardClip:
    """One clip of a shard; `load` is the loader `ShardCache` hands out (batches.clip_shapes reads `shapes`)."""

    def __init__(self, url: str, clip_id: str, entry: dict):
        self.url, self.clip_id, self.entry = url, clip_id, entry

    def _read(self, start: int, length: int) -> bytes:
        shard = _join(self.url, self.entry["shard"])
        with fsspec.open(shard, "rb") as f:
            f.seek(self.entry["offset"] + start)
            return f.read(length)

    def load(self) -> dict:
        from safetensors.torch import load

        data = self._read(0, self.entry["size"])
        if len(data) != self.entry["size"] or _sha256(data) != self.entry["sha256"]:
            raise CorruptShardError(f"{_join(self.url, self.entry['shard'])}: clip {self.clip_id} does not match "
                                    "its sha256 in the manifest (corrupt or truncated shard)")
        return load(data)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's shape from the safetensors header alone (two small range reads)."""
        (n,) = struct.unpack("<Q", self._read(0, 8))
        header = json.loads(self._read(8, n))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


class ShardCache(Mapping):
    """clip id -> loader of its cache entry, read by byte range from the shards (`write_shards`'s layout)."""

    def __init__(self, url: str):
        self.manifest = read_manifest(url)
        self.url = self.manifest["url"] if url.endswith(".json") else url

    def __getitem__(self, clip_id: str) -> Callable[[], dict]:
        return _ShardClip(self.url, clip_id, self.manifest["clips"][clip_id]).load

    def __iter__(self) -> Iterator[str]:
        return iter(self.manifest["clips"])

    def __len__(self) -> int:
        return len(self.manifest["clips"])


def verify(url: str) -> dict:
    """Check every shard's size and sha256 against the manifest; the first mismatch is an error naming it."""
    manifest = read_manifest(url)
    root = manifest["url"] if url.endswith(".json") else url
    for shard in manifest["shards"]:
        path = _join(root, shard["name"])
        with fsspec.open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != shard["sha256"]:
            raise CorruptShardError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                                    f"{shard['sha256'][:12]}... (corrupt shard)")
    return manifest
