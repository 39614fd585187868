"""Resume checkpoints: DeepSpeed's own folder, written so a kill at any moment leaves a loadable state,
read back with `torch.load(weights_only=True)`, and refused when it belongs to another run.

A stage's checkpoint folder holds `step-<n>/` (DeepSpeed's files from every rank plus the model config,
`dimo_config.json`, which `dimo.training.convert` reads), `latest` (the last complete tag) and `resume.json`:
what the run was trained from (its parameters, data, starting model pinned to a registry version or a weights
hash, and the global-step offset). A checkpoint whose record differs from the run's is refused, with what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from dimo.models.dimo_model import CONFIG_NAME
from dimo.training import registry
from dimo.training.stages import global_step_offset

LATEST = "latest"
RESUME_RECORD = "resume.json"


def _deepspeed_safe_globals() -> list:
    # The only non-tensor types a ZeRO optimizer checkpoint holds (found with
    # torch.serialization.get_unsafe_globals_in_checkpoint); everything else is tensors and plain data.
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, but loading without arbitrary unpickling."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def use_weights_only_loading(engine) -> None:
    # Built from the engine's config: without it DeepSpeed's engine writes the legacy (non-zipfile) format, which
    # DeepSpeed's own zero_to_fp32 (dimo.training.convert) cannot read (it memory-maps the shards).
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(config_params=engine._config)  # as DeepSpeed builds it


def latest_tag(checkpoint_dir: str | Path) -> str | None:
    """The tag of the last complete checkpoint, or None."""
    marker = Path(checkpoint_dir) / LATEST
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    return tag if (Path(checkpoint_dir) / tag).is_dir() else None

LORA_NAME = "lora.json"  # the LoRA spec of a run with adapters (training.model.lora)


def save(engine, checkpoint_dir: str | Path, step: int, client_state: dict, keep: int = 2) -> str:
    """Write checkpoint `step-<n>`; only then point `latest` at it (atomic rename), then prune old ones.

    A kill while writing leaves `latest` on the previous complete checkpoint.
    """
    checkpoint_dir = Path(checkpoint_dir)
    tag = f"step-{step:08d}"
    if (checkpoint_dir / tag).exists():  # a partial write from a killed run
        shutil.rmtree(checkpoint_dir / tag)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False)
    if engine.global_rank == 0:
        (checkpoint_dir / tag / CONFIG_NAME).write_text(engine.module.config.to_json())  # for the converter
        if getattr(engine.module, "lora_spec", None):  # adapters in the state dict: the converter adds them first
            (checkpoint_dir / tag / LORA_NAME).write_text(json.dumps(engine.module.lora_spec))
        fd, tmp = tempfile.mkstemp(dir=checkpoint_dir, prefix=".latest")
        with os.fdopen(fd, "w") as f:
            f.write(tag)
        os.replace(tmp, checkpoint_dir / LATEST)
        tags = sorted(p.name for p in checkpoint_dir.glob("step-*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(checkpoint_dir / old, ignore_errors=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return tag


def load(engine, checkpoint_dir: str | Path) -> dict | None:
    """Restore the engine (weights, optimizer, scheduler) from the latest checkpoint; its client state or None."""
    tag = latest_tag(checkpoint_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"{checkpoint_dir}/{tag}: DeepSpeed could not load this checkpoint")
    return client_state


# ------------------------------------------------------------------ what a checkpoint was trained from


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def weights_sha256(folder: str | Path) -> str:
    """sha256 over a model folder's files (names and bytes): its weights and configs. For a stock Wan folder only
    `transformer/` (what the generator loads; the text encoder and VAE beside it are not trained)."""
    folder = Path(folder)
    if (folder / "transformer").is_dir():
        folder = folder / "transformer"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def starting_model(init: str) -> dict:
    """A stage's `init`, pinned: a registry URI resolved to the version and run it points at now, a model folder
    (or `wan:<folder>`) by the sha256 of its files, `scratch` as is (the model config and seed, which the record
    holds too, determine a fresh model)."""
    if init == "scratch":
        return {"init": init}
    if init.startswith("models:/"):
        version = registry.resolve(init)
        return {"init": init, "model": version["uri"], "run_id": version["run_id"]}
    return {"init": init, "sha256": weights_sha256(init.removeprefix("wan:"))}


def describe(start: dict) -> str:
    """models:/dimo/3 (run ab12...), wan:/models/Wan2.1 (weights sha256 1f2e...), or scratch."""
    if "model" in start:
        return f"{start['model']} (run {start['run_id']})"
    if "sha256" in start:
        return f"{start['init']} (weights sha256 {start['sha256'][:12]})"
    return start["init"]


def resume_record(stage: str, params: dict, pairs: pd.DataFrame, start: dict) -> dict:
    """What a resumable checkpoint must agree with, part by part: the stage's parameters (with the effective
    geometric-loss schedule and learning rate, which the sweep's best parameters may change), its training pairs,
    the starting model (`starting_model`) and the global step it starts at (the earlier stages' steps)."""
    # `init` counts as the model it resolves to; `aliases` only name the registered result
    own = {k: v for k, v in params["stages"][stage].items() if k not in ("init", "aliases")}
    parameters = {"stage": own, "model": params["model"], "batch": params["batch"],
                  "seed": params["seed"], "geometric_loss": params["geometric_loss"],
                  "lr": params["stages"][stage].get("lr", params["lr"]), "precision": params.get("precision", "auto")}
    record = {"stage": stage, "starting_model": start,
              "global_step_offset": global_step_offset(stage, params["stages"]),
              "parameters": hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()
                                           ).hexdigest()[:16],
              "data": str(pd.util.hash_pandas_object(pairs).sum().item())}
    return json.loads(json.dumps(record))  # as it reads back from resume.json


def _weights_of(start: dict | None) -> dict | None:
    """The starting model's identity, whichever way `init` names it (models:/dimo@stage1 or models:/dimo/3)."""
    return {k: v for k, v in start.items() if k != "init" or v == "scratch"} if start else None


def _what_changed(old: dict | None, new: dict) -> list[str]:
    if old is None:
        return ["the folder has no resume record (written by an older version, or copied in), so what it was "
                "trained from is unknown"]
    changes = []
    if _weights_of(old.get("starting_model")) != _weights_of(new["starting_model"]):
        was = old.get("starting_model")
        changes.append(f"this run starts from {describe(new['starting_model'])}, the checkpoint from "
                       f"{describe(was) if was else 'an unrecorded model'}"
                       + (f" (init: {was['model']} resumes it)" if was and "model" in was else ""))
    if old.get("global_step_offset") != new["global_step_offset"]:
        changes.append(f"this run starts at global step {new['global_step_offset']}, the checkpoint at "
                       f"{old.get('global_step_offset')} (the earlier stages' steps changed)")
    if old.get("parameters") != new["parameters"]:
        changes.append(f"its training parameters differ (training.model, batch, seed, lr, geometric_loss or "
                       f"training.stages.{new['stage']})")
    if old.get("data") != new["data"]:
        changes.append("its training pairs differ (preprocess re-ran on other data or another mix)")
    if old.get("stage") != new["stage"]:
        changes.append(f"it is a checkpoint of {old.get('stage')}")
    return changes


def check_resumable(checkpoint_dir: str | Path, record: dict, rank: int = 0) -> None:
    """Refuse a checkpoint of another run (a stale one: e.g. the previous stage was trained again since), naming
    what changed; otherwise record this run (rank 0) so that a later resume can be checked the same way."""
    checkpoint_dir = Path(checkpoint_dir)
    marker = checkpoint_dir / RESUME_RECORD
    tag = latest_tag(checkpoint_dir)
    if tag is not None:
        old = json.loads(marker.read_text()) if marker.is_file() else None
        if changes := _what_changed(old, record):
            raise ValueError(
                f"{checkpoint_dir} holds a checkpoint ({tag}) of another {record['stage']} run: "
                f"{'; '.join(changes)}. Resuming it would train on from stale weights. Delete "
                f"{checkpoint_dir} to train {record['stage']} afresh, or restore what changed to resume it")
    if rank == 0:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(marker, json.dumps(record, indent=1, sort_keys=True))


# ------------------------------------------------------------------ checkpoints on remote storage
# `training.checkpoint_remote` (a DVC remote name or an fsspec URL) holds `<stage>/step-<n>/` (the checkpoint with
# its resume record), and `<stage>/latest`. A tag is uploaded under a temporary name and renamed into place, and
# `latest` is rewritten only after that: an upload cut off by a lost machine is never `latest`.
REMOTE_SUBDIR = "checkpoints"  # beside DVC's cache objects when the remote is a DVC remote


def remote_url(remote: str) -> str:
    """An fsspec URL or a path as is; a DVC remote name -> `<its url>/checkpoints` (from the DVC config)."""
    if "://" in remote or "/" in remote or remote.startswith("."):
        return remote
    from dvc.repo import Repo

    with Repo() as repo:
        remotes = repo.config["remote"]
    if remote not in remotes:
        raise ValueError(f"training.checkpoint_remote: {remote!r} is neither a URL nor a DVC remote "
                         f"(DVC remotes here: {sorted(remotes) or 'none'})")
    return f"{remotes[remote]['url'].rstrip('/')}/{REMOTE_SUBDIR}"


def _remote(remote: str, checkpoint_dir: Path):
    import fsspec

    fs, root = fsspec.core.url_to_fs(remote_url(remote))
    return fs, f"{root.rstrip('/')}/{checkpoint_dir.name}"


def upload(checkpoint_dir: str | Path, remote: str, tag: str, keep: int = 2) -> str:
    """Copy checkpoint `tag` (and the resume record) to the remote; `latest` there moves to it last."""
    checkpoint_dir = Path(checkpoint_dir)
    fs, base = _remote(remote, checkpoint_dir)
    fs.makedirs(base, exist_ok=True)
    part = f"{base}/.part-{tag}-{uuid.uuid4().hex[:8]}"
    fs.put(str(checkpoint_dir / tag), part, recursive=True)
    fs.put_file(str(checkpoint_dir / RESUME_RECORD), f"{part}/{RESUME_RECORD}")
    if fs.exists(f"{base}/{tag}"):  # an earlier upload of the same step (a resumed run)
        fs.rm(f"{base}/{tag}", recursive=True)
    fs.mv(part, f"{base}/{tag}", recursive=True)
    pointer = f"{base}/.latest-{uuid.uuid4().hex[:8]}"
    fs.pipe_file(pointer, tag.encode())
    fs.mv(pointer, f"{base}/{LATEST}")
    tags = sorted(p.rsplit("/", 1)[1] for p in fs.ls(base, detail=False) if p.rsplit("/", 1)[1].startswith("step-"))
    for old in [t for t in tags if t != tag][: max(len(tags) - keep, 0)]:
        fs.rm(f"{base}/{old}", recursive=True)
    return f"{base}/{tag}"


def fetch_remote(checkpoint_dir: str | Path, remote: str | None, record: dict | None = None) -> str | None:
    """When the local folder has no checkpoint and the remote has one (a lost machine's) of this run (`record`, see
    `resume_record`; None: any): download the remote's `latest` tag and its resume record, then write the local
    `latest`. Returns the tag fetched, or None. Another run's remote checkpoint is left alone (this run's
    uploads replace it), so a stale one never blocks a fresh start."""
    checkpoint_dir = Path(checkpoint_dir)
    if not remote or latest_tag(checkpoint_dir) is not None:
        return None
    fs, base = _remote(remote, checkpoint_dir)
    try:
        tag = fs.cat_file(f"{base}/{LATEST}").decode().strip()
        theirs = json.loads(fs.cat_file(f"{base}/{tag}/{RESUME_RECORD}"))
    except FileNotFoundError:
        return None
    if record is not None and _what_changed(theirs, record):
        return None
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=checkpoint_dir, prefix=".fetch-") as tmp:
        fs.get(f"{base}/{tag}", f"{tmp}/{tag}", recursive=True)
        os.replace(f"{tmp}/{tag}/{RESUME_RECORD}", checkpoint_dir / RESUME_RECORD)
        try:
            os.rename(f"{tmp}/{tag}", checkpoint_dir / tag)
        except OSError:  # another rank on this node fetched it first
            pass
    _atomic_write(checkpoint_dir / LATEST, tag)
    return tag


def remove_remote(checkpoint_dir: str | Path, remote: str | None) -> None:
    """Drop the stage's remote checkpoints (with the local ones, once its weights are saved and registered)."""
    if remote:
        fs, base = _remote(remote, Path(checkpoint_dir))
        if fs.exists(base):
            fs.rm(base, recursive=True)
