"""Resume checkpoints on remote storage (`training.checkpoint_remote`), as a lost machine sees them: a stage is cut
off in one clone, that clone is deleted, and a second clone resumes from the remote to the uninterrupted weights.
The remote is a local folder through fsspec (an S3 or DVC remote goes through the same calls)."""

from __future__ import annotations

import copy
import json
import shutil

import fsspec
import pytest
import torch

from dimo.training import checkpoints
from dimo.training.nodes import run_stage
from tests.test_checkpoints import MANIFEST, _register_base, _weights, store, tiny_stage_inputs  # noqa: F401


class MachineLost(Exception):
    pass


@pytest.mark.slow  # three short DeepSpeed runs
def test_a_second_clone_resumes_from_the_remote_to_the_uninterrupted_weights(store, monkeypatch):  # noqa: F811
    pairs, cache, params = tiny_stage_inputs(store / "uninterrupted", steps=2)
    _register_base(0)
    model, _ = run_stage("stage1", pairs, cache, None, MANIFEST, {}, params)
    uninterrupted = _weights(model)

    remote = store / "remote"
    clone_a = copy.deepcopy(params)
    clone_a.update(checkpoint_dir=str(store / "clone_a" / "ckpt"), checkpoint_remote=str(remote))
    upload = checkpoints.upload

    def upload_then_lose_the_machine(checkpoint_dir, remote, tag, keep=2):
        upload(checkpoint_dir, remote, tag, keep)
        if tag == "step-00000001":
            raise MachineLost(tag)

    monkeypatch.setattr(checkpoints, "upload", upload_then_lose_the_machine)
    with pytest.raises(MachineLost):
        run_stage("stage1", pairs, cache, None, MANIFEST, {}, clone_a)
    monkeypatch.setattr(checkpoints, "upload", upload)
    shutil.rmtree(store / "clone_a")  # the machine and its disk are gone
    assert (remote / "stage1" / "latest").read_text() == "step-00000001"

    clone_b = copy.deepcopy(clone_a)
    clone_b["checkpoint_dir"] = str(store / "clone_b" / "ckpt")
    model, summary = run_stage("stage1", pairs, cache, None, MANIFEST, {}, clone_b)
    assert summary["resumed_at"] == 1
    assert all(torch.equal(v, uninterrupted[k]) for k, v in model.state_dict().items()), "resumed weights differ"
    assert (remote / "stage1" / "latest").read_text() == "step-00000002"  # the finished stage uploaded its last


RECORD = {"stage": "stage1", "starting_model": {"init": "scratch"}, "global_step_offset": 0, "parameters": "p",
          "data": "d"}


def _fake_checkpoint(folder, tag: str) -> None:
    (folder / tag).mkdir(parents=True)
    (folder / tag / "mp_rank_00_model_states.pt").write_bytes(tag.encode() * 100)
    (folder / tag / "dimo_config.json").write_text("{}")


def test_a_half_written_upload_is_never_latest(tmp_path, monkeypatch):
    local, remote = tmp_path / "ckpt" / "stage1", tmp_path / "remote"
    local.mkdir(parents=True)
    (local / checkpoints.RESUME_RECORD).write_text(json.dumps(RECORD))
    _fake_checkpoint(local, "step-00000001")
    checkpoints.upload(local, str(remote), "step-00000001")
    _fake_checkpoint(local, "step-00000002")

    put_file = fsspec.implementations.local.LocalFileSystem.put_file
    calls = []

    def cut_off(self, lpath, rpath, **kw):  # the machine dies after the first file of step 2
        calls.append(rpath)
        if len(calls) > 1:
            raise ConnectionError("machine lost mid-upload")
        return put_file(self, lpath, rpath, **kw)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "put_file", cut_off)
    with pytest.raises(ConnectionError):
        checkpoints.upload(local, str(remote), "step-00000002")
    monkeypatch.undo()
    assert len(calls) == 2 and "step-00000002" in calls[0]  # step 2 was partly written...
    assert (remote / "stage1" / "latest").read_text() == "step-00000001"  # ... and latest stays on step 1

    other_run = tmp_path / "clone_c" / "stage1"  # another run's checkpoint on the remote is not fetched
    assert checkpoints.fetch_remote(other_run, str(remote), {**RECORD, "parameters": "changed"}) is None
    assert not other_run.exists()
    fresh = tmp_path / "clone_b" / "stage1"
    assert checkpoints.fetch_remote(fresh, str(remote), RECORD) == "step-00000001"
    assert checkpoints.latest_tag(fresh) == "step-00000001"
    assert (fresh / "step-00000001" / "mp_rank_00_model_states.pt").read_bytes() == b"step-00000001" * 100
    assert json.loads((fresh / checkpoints.RESUME_RECORD).read_text()) == RECORD
    assert not (fresh / "step-00000002").exists()
    assert checkpoints.fetch_remote(fresh, str(remote)) is None  # a local checkpoint wins: nothing fetched


def test_a_dvc_remote_name_resolves_to_its_url_and_an_unknown_name_says_so(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    from dvc.repo import Repo

    Repo.init()
    with Repo() as repo, repo.config.edit() as conf:
        conf["remote"]["team"] = {"url": str(tmp_path / "store")}
    assert checkpoints.remote_url("team") == f"{tmp_path / 'store'}/checkpoints"
    assert checkpoints.remote_url("s3://bucket/x") == "s3://bucket/x"
    with pytest.raises(ValueError, match="'nope' is neither a URL nor a DVC remote"):
        checkpoints.remote_url("nope")
