"""The training stage chain, defined once: names, order, predecessors, and the runner every experiment uses.

Everything that needs the stages reads them from here: the Kedro pipeline registry (one pipeline per stage,
built by `dimo.pipelines.training`), the DeepSpeed launcher, the geometric loss's global steps, the ablation, the
annealing sweep and `dvc.yaml` (checked against `STAGES` by tests/test_project.py). What a stage trains on (its
data mix), how long and from which weights are parameters (`training.stages.<key>`), not code. An environment
switches a stage off with `training.stages.<key>: null` (conf/paper: no toy pretraining at real scale): its
pipeline and DVC stage still run, train nothing and write a `disabled` record, so the chain, DVC and the
preflight keep one shape in every environment.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd

# `run_stage`'s inputs that every stage shares -> their catalog datasets (conf/base/catalog_training.yml).
SHARED_INPUTS = {"pairs": "training_pairs", "cache": "latent_cache", "codec": "latent_codec",
                 "manifest": "preprocess_manifest", "deepspeed_config": "deepspeed_config",
                 "params": "params:training"}
SWEEP_BEST_DATASET = "annealing_best_params"  # the annealing sweep's best schedule (an optional YAML file)


@dataclass(frozen=True)
class Stage:
    key: str              # training.stages.<key>; catalog datasets <key>_model, <key>_summary, <key>_registration
    pipeline: str         # the Kedro pipeline and DVC stage that train it
    previous: str | None  # the stage whose registration it waits for (its `init` usually names that model)
    paper: bool           # one of the paper's three stages: counts in the geometric anneal, reads the sweep

    @property
    def outputs(self) -> dict[str, str]:
        """What the stage writes -> catalog dataset (the `{stage}_*` patterns of catalog_training.yml)."""
        return {"model": f"{self.key}_model", "summary": f"{self.key}_summary",
                "registration": f"{self.key}_registration"}

    @property
    def inputs(self) -> dict[str, str]:
        """`run_stage`'s keyword arguments -> catalog datasets, for the Kedro node and the DeepSpeed launcher:
        the shared inputs, the predecessor's registration (it orders the runs) and, for paper stages, the sweep's
        best parameters (loaded always, used only with `training.geometric_loss_from_sweep`)."""
        inputs = dict(SHARED_INPUTS)
        if self.previous:
            inputs["previous"] = get(self.previous).outputs["registration"]
        if self.paper:
            inputs["sweep_best"] = SWEEP_BEST_DATASET
        return inputs


STAGES = (
    Stage("pretrain", "pretrain_generator", None, paper=False),  # toy scale only: no pretrained video DiT here
    Stage("stage1", "train_stage1", "pretrain", paper=True),     # same-view reconstruction
    Stage("stage2", "train_stage2", "stage1", paper=True),       # reconstruction + cross-view reproduction
    Stage("stage3", "train_stage3", "stage2", paper=True),       # view-rich data only
)
PAPER_STAGES = tuple(s.key for s in STAGES if s.paper)  # ("stage1", "stage2", "stage3")


def get(key: str) -> Stage:
    for s in STAGES:
        if s.key == key:
            return s
    raise KeyError(f"unknown training stage {key!r}; stages: {[s.key for s in STAGES]}")


def enabled(key: str, stages: dict) -> bool:
    """Whether `training.stages.<key>` trains in this environment (null = switched off)."""
    return stages.get(key) is not None


def enabled_stages(stages: dict) -> tuple[str, ...]:
    """The stage keys this environment trains, in chain order."""
    return tuple(s.key for s in STAGES if enabled(s.key, stages))


@dataclass(frozen=True)
class DisabledStage:
    """What a switched-off stage's train node returns instead of a model: its `{stage}_model` folder then holds
    only `disabled.json`, and its registration is `record()`, so DVC's outputs exist and the next stage waits
    on a registration that says why nothing was trained."""

    key: str

    def record(self) -> dict:
        return {"stage": self.key, "disabled": True,
                "reason": f"training.stages.{self.key} is null in this environment: nothing trained or registered"}

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "disabled.json"), "w") as f:
            json.dump(self.record(), f, indent=2)


def global_step_offset(key: str, stages: dict) -> int:
    """Steps of the paper stages before `key` (0 for pretraining): the geometric anneal runs over global steps."""
    if key not in PAPER_STAGES:
        return 0
    return sum(int(stages[s]["steps"]) for s in PAPER_STAGES[: PAPER_STAGES.index(key)])


class _SweepBest(enum.Enum):
    NOT_LOADED = "not loaded"

    def __bool__(self) -> bool:  # like a missing file: nothing to apply, nothing to record
        return False


# `sweep_best` of a caller that does not load `annealing_best_params` (the ablation): it trains with its own
# schedule. A caller that loads the dataset passes what it loaded: a dict, or None / a falsy value when the file
# does not exist, which is an error under `geometric_loss_from_sweep: true`.
NOT_LOADED = _SweepBest.NOT_LOADED


@dataclass
class StageResult:
    stage: str
    model: object        # the trained DimoModel
    summary: dict
    registration: dict | None


def run_chain(stages: Sequence[str], pairs: pd.DataFrame, cache: dict, codec, manifest: dict,
              deepspeed_config: dict, params: dict, *, register: bool = True, save_dir=None,
              sweep_best=NOT_LOADED, previous: dict | None = None) -> Iterator[StageResult]:
    """Train `stages` in order, each from its `init` (params), yielding after each one so the caller can score,
    prune or stop. `register`: register each stage's weights with its aliases. `save_dir`: also save each stage's
    weights to `<save_dir>/<stage>` (a later stage's `init` may point there). `previous`: the registration the
    first stage waits for (recorded in its summary; later stages record their predecessor's in this chain).
    The ablation, the sweep and the launcher all train through this, so "stage 1 -> 2 -> 3" is written once.
    A stage switched off in `params` (`enabled`) is passed over."""
    from dimo.training.nodes import register_stage, run_stage

    for key in stages:
        get(key)  # unknown names fail before any training
    for key in (k for k in stages if enabled(k, params["stages"])):
        model, summary = run_stage(key, pairs, cache, codec, manifest, deepspeed_config, params, previous,
                                   sweep_best=sweep_best)
        if save_dir is not None:
            model.save_pretrained(f"{save_dir}/{key}")
        registration = register_stage(key, model, codec, manifest, summary, params) if register else None
        previous = registration
        yield StageResult(key, model, summary, registration)
