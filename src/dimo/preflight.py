"""Before a run starts: what it needs that is not there yet, who makes it, and the one command that would.

A pipeline run alone (`kedro run --pipelines=train_stage3`) needs the datasets earlier pipelines write and the
registered models its stages start from. `problems` lists what is missing; `message` turns that into one line
with the pipelines that make each thing and the commands that would (Kedro, DVC). The project hook calls them in
`before_pipeline_run`, so a user gets that line within seconds instead of a traceback after minutes.

Nodes declare the models they start from with a tag `starts_from.<parameter path>` (e.g.
`starts_from.training.stages.stage2.init`); the parameter holds a model URI (`models:/dimo@stage1`), a folder
or `wan:<folder>`; a `wan:` folder, and the weight folders preprocess reads (a run with `params:preprocess`),
are checked against the configured model (`dimo.weight_folders`: files present, text width, channels, the I2V
image embedder). Optional datasets (a class whose name starts with `Optional`) and datasets that start empty
(`created_on_load`: caches, the Optuna study) are never required; an optional input that the main job makes and
that does not exist yet puts its pipeline in the plan (validate's clip sources), without being reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from dimo import weight_folders

TAG_PREFIX = "starts_from."


@dataclass(frozen=True)
class Problem:
    what: str              # e.g. "training_pairs", "model models:/dimo@stage2", "Wan folder /x"
    made_by: str | None    # the pipeline that makes it, if one does
    reason: str = ""       # e.g. "not in the registry at sqlite:///mlflow.db"
    missing: bool = True   # False: it exists but does not fit (a weight folder whose config disagrees)

    def __str__(self) -> str:
        notes = [n for n in (self.reason, f"made by {self.made_by}" if self.made_by else "") if n]
        return f"{self.what} ({'; '.join(notes)})" if notes else self.what


def _param(params: dict, path: str):
    value = params
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _optional(catalog, name: str) -> bool:
    """Not required: an `Optional*` dataset, or one that starts empty (`created_on_load`: caches, studies)."""
    try:
        kind = type(catalog.get(name))
    except Exception:  # a pattern or unknown dataset: let the run itself report it
        return True
    return kind.__name__.startswith("Optional") or getattr(kind, "created_on_load", False)


def producers(registered: dict) -> dict[str, str]:
    """dataset -> the smallest registered pipeline (by node count, never __default__) that writes it."""
    out: dict[str, tuple[int, str]] = {}
    for name, pipe in registered.items():
        if name == "__default__":
            continue
        for ds in pipe.all_outputs():
            if ds not in out or len(pipe.nodes) < out[ds][0]:
                out[ds] = (len(pipe.nodes), name)
    return {ds: name for ds, (_, name) in out.items()}


def registering_pipeline(uri: str, params: dict, registered: dict) -> str | None:
    """The training pipeline that registers `models:/<name>@<alias>` (from training.stages.*.aliases)."""
    from dimo.training import stages

    name, _, alias = uri.removeprefix("models:/").partition("@")
    training = params.get("training", {})
    if not alias or name != training.get("registered_model_name"):
        return None
    for key, stage in training.get("stages", {}).items():
        if alias in (stage or {}).get("aliases", []):  # a stage switched off (null) registers nothing
            try:
                pipeline = stages.get(key).pipeline
            except KeyError:
                return None
            return pipeline if pipeline in registered else None
    return None


def model_problem(uri: str, params: dict) -> tuple[str, str] | None:
    """(what, why) when `uri` cannot be loaded now, or None when it can."""
    from pathlib import Path

    if not isinstance(uri, str) or uri in ("", "scratch"):
        return None
    if uri.startswith("wan:"):
        name, generator, _ = configured_model(params)
        found = weight_folders.check_transformer(uri.removeprefix("wan:"), generator, name)
        return (f"Wan folder {found[0]}", found[1]) if found else None
    if not uri.startswith("models:/"):
        return None if Path(uri).is_dir() else (f"model folder {uri}", "no such folder")
    import mlflow

    from dimo.training import handover, registry

    if handover.stage_folder(uri, _param(params, "training") or {}) is not None:
        return None  # the stage's DVC-tracked folder holds it
    try:
        tags = registry.resolve(uri)["tags"]
    except LookupError:
        return f"model {uri}", f"not in the registry at {mlflow.get_tracking_uri()}"
    spec = _param(params, "training.model") or {}
    got = (tags.get("config"), tags.get("variant"))
    want = (spec.get("config"), spec.get("variant"))
    if None not in got and None not in want and got != want and not spec.get("transfer_from_other_variant"):
        return (f"model {uri}", f"a {got[0]!r} model of variant {got[1]!r}, but training.model asks for "
                                f"{want[0]!r} variant {want[1]!r}")
    return None


def pipeline_problems(pipe, catalog, params: dict, registered: dict, made_in_run: set[str],
                      made: dict[str, str] | None = None) -> list[Problem]:
    """What `pipe` needs that neither exists nor is made by a pipeline in `made_in_run` (`made`: `producers`)."""
    made = producers(registered) if made is None else made
    out = []
    own = pipe.all_outputs()
    for ds in sorted(pipe.inputs()):
        if ds.startswith("params:") or ds == "parameters" or ds in own or _optional(catalog, ds):
            continue
        if made.get(ds) in made_in_run or catalog.exists(ds):
            continue
        out.append(Problem(ds, made.get(ds)))
    registered_in_run = set()
    for node in pipe.nodes:
        for tag in sorted(node.tags):
            if not tag.startswith(TAG_PREFIX):
                continue
            uri = _param(params, tag.removeprefix(TAG_PREFIX))
            maker = registering_pipeline(uri, params, registered) if isinstance(uri, str) else None
            if maker in made_in_run or uri in registered_in_run:
                continue
            if found := model_problem(uri, params):
                out.append(_folder_problem(*found, maker))
        registered_in_run |= _aliases_registered(node, params)
    if "params:preprocess" in pipe.inputs():
        out += _preprocess_problems(params)
    return out


def _folder_problem(what: str, why: str, made_by: str | None = None) -> Problem:
    """A weight-folder finding: missing (no folder, no file) or wrong (its config.json disagrees)."""
    return Problem(what, made_by, why, missing=not why.startswith("config.json"))


def _preprocess_problems(params: dict) -> list[Problem]:
    """The weight folders preprocess reads (codec, text and image encoders), against the configured model."""
    name, generator, text_width = configured_model(params)
    return [_folder_problem(f"weight folder {folder}", why) for folder, why in
            weight_folders.preprocess_problems(params.get("preprocess", {}), generator, text_width, name)]


def weight_folder_problems(params: dict, pipeline_names: list[str]) -> list[Problem]:
    """The weight folders the named pipelines start from, checked from the parameters alone (no pipeline is
    built, no torch imported): the `wan:` init of each training stage, the ablation's `wan:` base, and
    preprocess's folders. The CLI hook (`dimo.cli_hooks`) runs this before Kedro builds the session; `plan`
    checks the same folders through the nodes' `starts_from` tags."""
    from dimo.training import stages

    every = "__default__" in pipeline_names
    uris = [_param(params, f"training.stages.{st.key}.init") for st in stages.STAGES
            if every or st.pipeline in pipeline_names]
    if every or "ablation" in pipeline_names:
        uris.append(_param(params, "ablation.base"))
    out = []
    for uri in dict.fromkeys(u for u in uris if isinstance(u, str) and u.startswith("wan:")):
        if found := model_problem(uri, params):
            out.append(_folder_problem(*found))
    if every or "preprocess" in pipeline_names:
        out += _preprocess_problems(params)
    return out


def configured_model(params: dict) -> tuple[str, dict, int]:
    """(config name, generator kwargs, text input width) of `training.model`, what weight folders must fit."""
    from dimo.models import configs

    spec = _param(params, "training.model") or {}
    cfg = configs.get(spec.get("config", "tiny"), variant=spec.get("variant", "full"), **spec.get("overrides", {}))
    return cfg.name, cfg.generator, cfg.text_in_dim


def _aliases_registered(node, params: dict) -> set[str]:
    """Model URIs a training node of this run registers (so a later node of the same run may start from them)."""
    training = params.get("training", {})
    key = node.name.removeprefix("register_")
    if not node.name.startswith("register_") or not (training.get("stages") or {}).get(key):
        return set()
    name = training.get("registered_model_name")
    return {f"models:/{name}@{a}" for a in training["stages"][key].get("aliases", [])}


def plan(pipe, catalog, params: dict, registered: dict) -> tuple[list[Problem], list[str]]:
    """(what the run misses, the pipelines to run first, in data-flow order; a stage switched off in this
    environment is not one of them)."""
    from dimo.training import stages

    made = producers(registered)
    problems = pipeline_problems(pipe, catalog, params, registered, set(), made)
    needed: list[str] = []
    frontier = [p.made_by for p in problems if p.made_by] + (
        _optional_sources(pipe, catalog, registered, needed, made) if problems else [])
    while frontier:
        name = frontier.pop()
        if name in needed:
            continue
        needed.append(name)
        upstream = pipeline_problems(registered[name], catalog, params, registered, set(needed), made)
        frontier += [p.made_by for p in upstream if p.made_by and p.made_by not in needed]
        frontier += _optional_sources(registered[name], catalog, registered, needed, made)
    switched_off = {st.pipeline for st in stages.STAGES
                    if not stages.enabled(st.key, _param(params, "training.stages") or {})}
    order = [n for n in _data_flow_order(registered) if n in needed and n not in switched_off]
    return problems, order


def _optional_sources(pipe, catalog, registered: dict, needed: list[str], made: dict[str, str]) -> list[str]:
    """Pipelines of the main job that make optional inputs of `pipe` which do not exist yet (e.g. the synthetic
    clips validate reads): not required, but what the default configuration expects, so they join the plan."""
    main = registered.get("__default__")
    if main is None:
        return []
    made_by_main = main.all_outputs()
    return [made[ds] for ds in sorted(pipe.inputs() - pipe.all_outputs())
            if made.get(ds) and made[ds] not in needed and ds in made_by_main and _optional(catalog, ds)
            and not catalog.exists(ds)]


def _data_flow_order(registered: dict) -> list[str]:
    """Registered pipelines, producers before consumers (a topological order of their datasets)."""
    made = producers(registered)
    names = [n for n in registered if n != "__default__"]
    deps = {n: {made[d] for d in registered[n].inputs() if made.get(d) not in (None, n)} for n in names}
    out: list[str] = []
    while len(out) < len(names):
        ready = [n for n in names if n not in out and deps[n] <= set(out)]
        if not ready:  # a cycle between pipelines: keep the rest in registry order
            ready = [n for n in names if n not in out]
        out += sorted(ready, key=names.index)[:1]
    return out


def message(run: str, problems: list[Problem], order: list[str], env: str | None, dvc_stages: set[str]) -> str:
    """One line: what is missing, who makes it, and the commands that would make it."""
    env_flag = f" --env={env}" if env and env not in ("local", "base") else ""
    env_var = f"KEDRO_ENV={env} " if env_flag else ""
    missing, wrong = [p for p in problems if p.missing], [p for p in problems if not p.missing]
    parts = ([f"missing {', '.join(map(str, missing))}"] if missing else []) + (
        [f"wrong {', '.join(map(str, wrong))}"] if wrong else [])
    line = f"{run} cannot start: {'; '.join(parts)}."
    if order:
        line += f" Run first: kedro run{env_flag} --pipelines={','.join(order)}"
        if run in dvc_stages:
            line += f"; or {env_var}dvc repro {run} (DVC builds what is upstream)"
        line += "; or dvc pull when a remote has them."
    else:
        line += " Nothing in this project makes it: fix the configuration named above."
    return line
