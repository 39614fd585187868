"""Stage models handed over through DVC: the next stage and evaluate start from the stage's folder, the registry
is the catalogue.

Every training stage writes its diffusers-layout model to `<paths.models>/<stage>/` (catalog `{stage}_model`), a
DVC output that the next stage and evaluate depend on. An `init` (or `evaluate.model`) that names a stage's
registry alias (`models:/dimo@stage1`) is read from that folder when it holds a model, so a fresh clone after
`dvc pull` trains stage 2 or evaluates without the MLflow store that registered stage 1. The registered version
keeps the folder's DVC hash as its `dvc_md5` tag: the registry points at the DVC output people can pull.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

DVC_MD5_TAG = "dvc_md5"
CONFIG_NAME = "dimo_config.json"  # dimo.models.dimo_model.CONFIG_NAME (not imported: the preflight stays torch-free)
ASSEMBLED_DIR = Path(".cache") / "handover"  # inference's folder layout (dimo/, codec/, text_encoder.json)


def stage_of(uri: str, training: dict) -> str | None:
    """The stage whose `aliases` include the alias `uri` names, when `uri` is `models:/<registered_model_name>@<alias>`
    of these training parameters (an ablation variant's or the study's own names are not the chain's), else None."""
    if not isinstance(uri, str) or not uri.startswith("models:/") or "@" not in uri:
        return None
    name, alias = uri.removeprefix("models:/").rsplit("@", 1)
    if name != training.get("registered_model_name"):
        return None
    stages = training.get("stages") or {}
    return next((key for key, spec in stages.items() if spec and alias in (spec.get("aliases") or [])), None)


def stage_folder(uri: str, training: dict) -> Path | None:
    """`<training.stage_models>/<stage>` when `uri` is a stage's alias (`stage_of`) and that folder holds a saved
    model, else None (also when `stage_models` is unset: no handover)."""
    stage = stage_of(uri, training) if training.get("stage_models") else None
    if stage is None:
        return None
    folder = Path(training["stage_models"]) / stage
    return folder if (folder / CONFIG_NAME).is_file() else None


def resolve_init(uri: str, training: dict) -> str:
    """What to load for `uri`: the stage folder when there is one (`stage_folder`), else `uri` unchanged."""
    folder = stage_folder(uri, training)
    return str(folder) if folder is not None else uri


def dvc_md5(folder: str | Path) -> str:
    """DVC 3's hash of a directory output (`<md5>.dir`, as dvc.lock records it): the md5 of the sorted
    [{md5, relpath}] listing of its files."""
    folder = Path(folder)
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            entries.append({"md5": hashlib.file_digest(f, "md5").hexdigest(),
                            "relpath": path.relative_to(folder).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def assemble(stage_dir: str | Path, codec_dir: str | Path, text_spec: dict, into: str | Path | None = None) -> Path:
    """A folder in the registry artifacts' layout (what `dimo.inference.load` reads) made of links to the stage's
    model folder and the codec folder, plus the text-encoder spec: evaluate loads a handed-over model with it."""
    stage_dir, codec_dir = Path(stage_dir).resolve(), Path(codec_dir).resolve()
    into = Path(into) if into else ASSEMBLED_DIR / stage_dir.name
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    (into / "dimo").symlink_to(stage_dir, target_is_directory=True)
    (into / "codec").symlink_to(codec_dir, target_is_directory=True)
    (into / "text_encoder.json").write_text(json.dumps(text_spec))
    return into
