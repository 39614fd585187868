"""The study as a list of units: one (arm, seed) each, trained through `training.stages.run_chain` and saved under
`<study.output_dir>/<unit>/`, so the same command after a kill continues where it stopped.

An arm (`study.arms.<name>`) is a model variant (`dimo.models.configs.VARIANTS`) and a stage schedule. Every arm
starts from one shared generator, the `base` unit (the toy pretraining stage, trained once). `recon_only` is the
H3 control: stage-1-style reconstruction for as many steps as the full schedule's stages together.

A unit's folder holds one model folder per finished stage (`<stage>/`) beside `<stage>.json` (its training
summary, written after the weights: its presence marks the stage done), the stage's resume checkpoints while it
trains (`checkpoints/<stage>/`, the existing resumable checkpoint code) and, once measured, `metrics.json`.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dimo.models import configs
from dimo.training.stages import PAPER_STAGES, get

BASE_UNIT = "base"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Unit:
    name: str              # folder name: <arm>-s<seed>, or "base"
    arm: str               # study.arms key ("base" for the shared generator)
    variant: str           # dimo.models.configs.VARIANTS
    seed: int
    schedule: tuple        # stage keys trained in order
    steps: dict            # stage -> optimizer steps


def units(study: dict, training: dict) -> list[Unit]:
    """The shared base first, then every arm x seed in the order of `study.arms` (seed-major, so an early stop
    still leaves every arm with the first seeds)."""
    base_stage = study["base_stage"]
    out = [Unit(BASE_UNIT, BASE_UNIT, "full", int(training["seed"]), (base_stage,),
                {base_stage: int(training["stages"][base_stage]["steps"])})]
    for seed in study["seeds"]:
        for arm, spec in study["arms"].items():
            if spec["variant"] not in configs.VARIANTS:
                raise ValueError(f"study.arms.{arm}: unknown variant {spec['variant']!r}; known: {configs.VARIANTS}")
            schedule = tuple(spec["schedule"])
            for key in schedule:
                get(key)  # unknown stage names fail before anything trains
            steps = {key: int(training["stages"][key]["steps"]) for key in schedule}
            if spec.get("steps_of"):  # the H3 control: as many steps as these stages together
                steps[schedule[-1]] = sum(int(training["stages"][k]["steps"]) for k in spec["steps_of"])
            out.append(Unit(f"{arm}-s{seed}", arm, spec["variant"], int(seed), schedule, steps))
    return out


def unit_dir(study: dict, unit: Unit) -> Path:
    return Path(study["output_dir"]) / unit.name


def unit_params(unit: Unit, training: dict, study: dict) -> dict:
    """The training parameters of one unit: its variant and seed, its own checkpoints, each stage's `init` = the
    unit's previous stage folder (the first: the base unit's weights), the unit's step budgets."""
    params = copy.deepcopy(training)
    folder = unit_dir(study, unit)
    params["seed"] = unit.seed
    params["model"] = {**params["model"], "variant": unit.variant, "transfer_from_other_variant": True}
    params["checkpoint_dir"] = str(folder / "checkpoints")
    params["sample_steps"] = 0  # no sample grids: the study's measurements are its outputs
    params["keep_checkpoints"] = False
    previous = None if unit.name == BASE_UNIT else str(unit_dir(study, base_unit(study, training)) /
                                                       study["base_stage"])
    for key in unit.schedule:
        st = params["stages"][key]
        st["steps"] = unit.steps[key]
        st["init"] = previous or st["init"]
        previous = str(folder / key)
    if unit.name != BASE_UNIT:  # the anneal runs over the unit's own steps: offsets as if its schedule were stage1..
        for key in PAPER_STAGES:
            if key not in unit.schedule:
                params["stages"][key]["steps"] = 0
    return params


def base_unit(study: dict, training: dict) -> Unit:
    return units({**study, "seeds": []}, training)[0]


def done_stages(study: dict, unit: Unit) -> list[str]:
    """Stages of the unit whose weights and summary are saved (in schedule order, stopping at the first gap)."""
    out = []
    for key in unit.schedule:
        if not (unit_dir(study, unit) / f"{key}.json").is_file():
            break
        out.append(key)
    return out


def write_json(path: Path, data) -> None:
    """Atomically (temp file + rename): a kill mid-write leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=float)
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None
