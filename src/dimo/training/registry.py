"""The MLflow model registry: one registered model, a version per stage, aliases (base, stage1..3, champion).

`champion` is not set by training: `gate_champion` (called by the evaluate pipeline) moves it to a scored stage-3
model when it scores at least as well as the current champion on the configured metric.

A registered version is an MLflow pyfunc model logged as code (`registry_model.py`, no pickle) whose artifacts are
the diffusers-style folders: the 3DiMo model (safetensors + config per part), the latent codec, and the
text-encoder spec. Stages find their starting point by alias (`models:/dimo@stage1`), never by a path guess.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc  # noqa: F401 (mlflow.pyfunc.log_model)
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

CACHE_DIR = Path(".cache") / "registry"


# The pyfunc model's code, logged as a file (models-from-code): a version holds no pickle (registry_model.py).
MODEL_CODE = Path(__file__).with_name("registry_model.py")


def register(model, codec, text_spec: dict, name: str, aliases: list[str], tags: dict | None = None) -> dict:
    """Log model + codec + text spec as a pyfunc model in the active run, register a version, set aliases."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(f"{tmp}/dimo")
        codec.vae.save_pretrained(f"{tmp}/codec/vae")
        Path(f"{tmp}/text_encoder.json").write_text(json.dumps(text_spec))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL_CODE),
            artifacts={"dimo": f"{tmp}/dimo", "codec": f"{tmp}/codec", "text_encoder": f"{tmp}/text_encoder.json"},
            pip_requirements=["dimo"],  # the project package; skips MLflow's slow dependency inference
            registered_model_name=name)
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    log.info("registered %s version %s as %s", name, version, ", ".join(aliases))
    return {"name": name, "version": version, "aliases": aliases, "model_uri": info.model_uri,
            "run_id": mlflow.active_run().info.run_id if mlflow.active_run() else None}


def resolve(uri: str) -> dict:
    """The version a registry URI (`models:/name@alias` or `models:/name/version`) points at now: name, version,
    run id, tags and the pinned URI `models:/name/version`."""
    name, _, ref = uri.removeprefix("models:/").partition("@")
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, ref) if ref else client.get_model_version(
            *name.rsplit("/", 1))
    except (MlflowException, TypeError) as err:
        reason = err.message if isinstance(err, MlflowException) else "expected models:/name@alias or models:/name/N"
        raise LookupError(f"{uri}: no such registered model version in {mlflow.get_tracking_uri()} "
                          f"(was the previous stage run?): {reason}") from err
    return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags),
            "uri": f"models:/{mv.name}/{mv.version}"}


def download(uri: str) -> Path:
    """Local folder of a registered model (`models:/name@alias` or `models:/name/version`), cached by version."""
    mv = resolve(uri)
    target = CACHE_DIR / mv["name"] / f"{mv['version']}-{mv['run_id']}"  # the run id tells stores apart
    if not (target / "artifacts" / "dimo").is_dir():
        # Downloaded beside the cache and renamed into place: ranks (or runs) loading one version at once never
        # see a half-written folder (two ranks under the deepspeed launcher did); the second rename keeps the first.
        target.parent.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        mlflow.artifacts.download_artifacts(artifact_uri=mv["uri"], dst_path=str(part))
        try:
            part.rename(target)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(part, ignore_errors=True)
        if not (target / "artifacts" / "dimo").is_dir():
            raise RuntimeError(f"{target}: an incomplete registry cache folder (an interrupted older download): "
                               "delete it and run again")
    return target / "artifacts"


def load_model(uri: str):
    """A DimoModel from `models:/...`, a local model folder, or `wan:<folder>` (stock Wan2.1 + new motion parts)."""
    from dimo.models import DimoModel

    if uri.startswith("models:/"):
        return DimoModel.from_pretrained(str(download(uri) / "dimo"))
    if uri.startswith("wan:"):
        raise ValueError("wan:<folder> needs a model config: use DimoModel.from_stock_pretrained(config, folder)")
    if not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: not a registered model URI (models:/name@alias) nor a model folder")
    return DimoModel.from_pretrained(uri)


# ------------------------------------------------------------------ the champion gate

BENCHMARK_TAG = "evaluate.benchmark"  # which benchmark a version's `evaluate.<metric>` tags were scored on


def at_least_as_good(candidate: float, champion: float, higher_is_better: bool) -> bool:
    return candidate >= champion if higher_is_better else candidate <= champion


def _recorded_score(version: dict, metric: str, benchmark: str) -> float | None:
    """The version's recorded score on this benchmark, or None (never scored, another benchmark, unavailable)."""
    value = version["tags"].get(f"evaluate.{metric}")
    if value is None or version["tags"].get(BENCHMARK_TAG) != benchmark:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _decide(candidate: dict, champion: dict | None, score: float, champion_score: float | None, metric: str,
            higher_is_better: bool, alias: str, candidate_stage: str | None) -> tuple[bool, str]:
    """(move the alias?, why)."""
    stage = candidate["tags"].get("stage")
    if candidate_stage and stage != candidate_stage:
        return False, f"not a candidate: a {stage} model, and only {candidate_stage} models may become {alias}"
    if champion is None:
        return True, f"the first {alias}"
    if champion["version"] == candidate["version"]:
        return False, f"already the {alias}"
    if not math.isfinite(score):
        return False, f"{metric} of the candidate is unavailable (see the benchmark notes)"
    if champion_score is None:
        return False, (f"the {alias} ({champion['uri']}) has no {metric} score on this benchmark: score it with "
                       f"evaluate.model={champion['uri']}, then evaluate the candidate again")
    sign = ">=" if higher_is_better else "<="
    if at_least_as_good(score, champion_score, higher_is_better):
        return True, f"{metric} {score:.6g} {sign} {champion_score:.6g} of {champion['uri']}"
    return False, f"{metric} {score:.6g} is not {sign} {champion_score:.6g} of {champion['uri']}"


def gate_champion(candidate_uri: str, score: float, *, metric: str, higher_is_better: bool, benchmark: str,
                  alias: str = "champion", candidate_stage: str | None = None) -> dict:
    """Record the candidate's score on its version (tags `evaluate.<metric>`, `evaluate.benchmark`), then move
    `alias` to it when it scores at least as well as the version holding the alias on the same benchmark; with
    no holder yet, the candidate becomes the first. Only versions trained by `candidate_stage` (their `stage`
    tag) may take the alias. Returns the gate's inputs and decision (also logged, and MLflow run tags when a run
    is active)."""
    candidate = resolve(candidate_uri)
    name, client = candidate["name"], mlflow.MlflowClient()
    if math.isfinite(score):
        client.set_model_version_tag(name, candidate["version"], f"evaluate.{metric}", repr(float(score)))
        client.set_model_version_tag(name, candidate["version"], BENCHMARK_TAG, benchmark)
    try:
        champion = resolve(f"models:/{name}@{alias}")
    except LookupError:
        champion = None
    champion_score = _recorded_score(champion, metric, benchmark) if champion else None
    promote, reason = _decide(candidate, champion, score, champion_score, metric, higher_is_better, alias,
                              candidate_stage)
    if promote:
        client.set_registered_model_alias(name, alias, candidate["version"])
    result = {"alias": f"models:/{name}@{alias}", "metric": metric, "higher_is_better": higher_is_better,
              "benchmark": benchmark, "candidate": candidate["uri"], "candidate_from": candidate_uri,
              "candidate_score": score, "champion_before": champion["uri"] if champion else None,
              "champion_score": champion_score, "promoted": promote, "reason": reason,
              "champion_after": candidate["uri"] if promote else (champion["uri"] if champion else None)}
    log.info("champion gate: %s %s %s (%s)", candidate["uri"], "becomes" if promote else "does not become",
             result["alias"], reason)
    if mlflow.active_run():
        mlflow.set_tags({"champion_gate.decision": "promoted" if promote else "kept",
                         "champion_gate.candidate": candidate["uri"], "champion_gate.reason": reason[:500],
                         "champion_gate.champion": result["champion_after"] or ""})
    return result
