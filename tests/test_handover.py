"""Which alias is read from a stage's folder (training/handover.py); the fresh-clone run is tests/test_dvc_state.py."""

from __future__ import annotations

import json

from dimo.models.dimo_model import CONFIG_NAME
from dimo.pipelines.ablation.nodes import variant_params
from dimo.training import handover

TRAINING = {"registered_model_name": "dimo", "stage_models": None,
            "stages": {"pretrain": {"aliases": ["base"], "init": "scratch"},
                       "stage1": {"aliases": ["stage1"], "init": "models:/dimo@base"}, "stage2": None}}


def _training(tmp_path, saved=("pretrain",)) -> dict:
    for stage in saved:
        (tmp_path / stage).mkdir()
        (tmp_path / stage / CONFIG_NAME).write_text("{}")
    (tmp_path / "stage1").mkdir(exist_ok=True)  # a folder without a model (e.g. a switched-off stage's record)
    return {**TRAINING, "stage_models": str(tmp_path)}


def test_a_stage_alias_of_the_chain_is_read_from_its_folder_when_it_holds_a_model(tmp_path):
    assert handover.CONFIG_NAME == CONFIG_NAME
    training = _training(tmp_path)
    assert handover.resolve_init("models:/dimo@base", training) == str(tmp_path / "pretrain")
    assert handover.resolve_init("models:/dimo@stage1", training) == "models:/dimo@stage1"  # no model there
    assert handover.resolve_init("models:/dimo/3", training) == "models:/dimo/3"  # a pinned version: registry
    assert handover.resolve_init("models:/dimo@champion", training) == "models:/dimo@champion"  # no stage's alias
    assert handover.resolve_init("models:/dimo-study@base", training) == "models:/dimo-study@base"  # another name
    assert handover.resolve_init("models:/dimo@base", {**training, "stage_models": None}) == "models:/dimo@base"


def test_ablation_variants_share_the_chains_base_folder_and_keep_their_own_stages(tmp_path):
    training = {**_training(tmp_path), "model": {"config": "tiny", "variant": "full"}, "checkpoint_dir": "c",
                "stages": {k: {"aliases": [k], "init": f"models:/dimo@{k}", "steps": 4} for k in
                           ("stage1", "stage2", "stage3")}}
    training["stages"]["pretrain"] = {"aliases": ["base"], "init": "scratch", "steps": 4}
    ablation = {"base": "models:/dimo@base", "registered_model_prefix": "dimo-ablation", "checkpoint_dir": "a",
                "steps_scale": 1.0}
    params = variant_params("no_hand", training, ablation)
    assert params["stages"]["stage1"]["init"] == str(tmp_path / "pretrain")
    assert params["stages"]["stage2"]["init"] == "models:/dimo-ablation-no_hand@stage1"
    assert handover.resolve_init(params["stages"]["stage2"]["init"], params) == "models:/dimo-ablation-no_hand@stage1"


def test_dvc_md5_is_the_sorted_listing_hash(tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "b.json").write_text("{}")
    (tmp_path / "m" / "sub" / "a.bin").write_bytes(b"x")
    first = handover.dvc_md5(tmp_path / "m")
    assert first.endswith(".dir") and len(first) == 36
    (tmp_path / "m" / "b.json").write_text(json.dumps({"changed": 1}))
    assert handover.dvc_md5(tmp_path / "m") != first
