"""The benchmark: which (driving, target) pairs, generation through the inference API, and per-pair scores.

Protocols, all on held-out clips (the clip table's `test` split unless configured otherwise):

* `reconstruction` (3DiMo Table 1, DisCo protocol): a clip drives itself; the reference is its first frame, the
  prompt its caption.
* `cross_view` (the view-rich benchmark): the driving clip is one view or camera path of a motion, the target
  another view of the same motion; the reference is the target's first frame and the prompt the target's
  caption, which names the target's camera. The generated video is compared with the target's ground-truth render.
* `external`: rows of a user manifest (`external_pairs`), e.g. TikTok sequences, scored the same way.

Per pair: PSNR / SSIM / LPIPS against the target; with `label_params`, the pseudo-labeller runs on the generated
video and gives pose accuracy against the synthetic ground truth (MPJPE) and camera following (the apparent camera
motion of the generated video against the target's, both measured by the same labeller). FID / FVD are set-level
(`set_metrics`). Which metrics exist, their direction and kind: `dimo.evaluation.registry`. Generation goes through
`dimo.inference`, the code users run, so the benchmark measures it.

Target clips: the functions that read a target take `clips`, a mapping {clip_id: loader} (the catalog's clip
partitions; `loader()` returns a `dimo.datasets.Video`), looked up by `target_clip_id`. Without it, or for an
external-manifest row (a user file outside the catalog), the target is read from `target_path`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dimo import camera_vocabulary, clip_table, inference, video_io
from dimo.evaluation import metrics as M
from dimo.evaluation import registry
from dimo.evaluation.common import MetricUnavailable
from dimo.evaluation.pose_metrics import (  # noqa: F401
    CAMERA_SIGNAL_UNITS,
    camera_signals,
    follows,
    pose_and_camera,
)

log = logging.getLogger(__name__)

KINDS = ("reconstruction", "cross_view")
VIEW_RICH = ("multi_view", "moving_camera")
PAIR_COLUMNS = ["pair_id", "kind", "driving_clip_id", "target_clip_id", "group_id", "driving_path", "reference_path",
                "target_path", "keypoints_path", "prompt", "camera_motion", "camera_category", "supervision",
                "target_label_path", "target_gt_path"]


def __getattr__(name: str):
    """`PER_PAIR_METRICS` / `HIGHER_IS_BETTER`: views of the registry, computed on access so a metric registered
    later shows too. New code reads `registry.names("pair")` / `registry.get(name).higher_is_better`."""
    if name == "PER_PAIR_METRICS":
        return registry.names("pair")
    if name == "HIGHER_IS_BETTER":
        return {m.name: m.higher_is_better for m in registry.METRICS.values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _category(key) -> str:
    if not isinstance(key, str) or not key:
        return "unknown"
    try:
        return camera_vocabulary.get(key).category
    except KeyError:
        return "unknown"


def _pair_row(kind: str, drv, tgt) -> dict:
    label = getattr(drv, "label_path", None)
    gt = getattr(tgt, "gt_path", None)
    return {"pair_id": (f"{kind[:5]}-{drv.clip_id}--{tgt.clip_id}" if kind != "reconstruction"
                        else f"recon-{tgt.clip_id}"),
            "kind": kind, "driving_clip_id": drv.clip_id, "target_clip_id": tgt.clip_id, "group_id": tgt.group_id,
            "driving_path": drv.path, "reference_path": tgt.path, "target_path": tgt.path,
            "keypoints_path": label if isinstance(label, str) and label else None, "prompt": tgt.caption,
            "camera_motion": tgt.camera_motion, "camera_category": _category(tgt.camera_motion),
            "supervision": tgt.supervision, "target_label_path": getattr(tgt, "label_path", None),
            "target_gt_path": gt if isinstance(gt, str) and gt else None}


def benchmark_pairs(clips: pd.DataFrame, split: str = "test", kinds: Sequence[str] = KINDS,
                    max_pairs: int | None = None) -> pd.DataFrame:
    """The benchmark pairs of one split of a (labelled) clip table, ordered reconstruction then cross-view.

    `max_pairs` keeps an even spread: at most that many pairs per kind, taken round-robin over groups."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown benchmark kinds {sorted(unknown)}; known: {list(KINDS)}")
    subset = clips[clips["split"] == split].sort_values("clip_id")
    rows: list[dict] = []
    for kind in kinds:
        if kind == "reconstruction":
            part = [_pair_row(kind, c, c) for c in subset.itertuples()]
        else:
            part = []
            rich = subset[subset["supervision"].isin(VIEW_RICH)]
            for _, members in rich.groupby("group_id"):
                views = list(members.itertuples())
                part += [_pair_row(kind, a, b) for a in views for b in views if a.clip_id != b.clip_id]
        rows += _spread(part, max_pairs)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _spread(rows: list[dict], limit: int | None) -> list[dict]:
    if limit is None or len(rows) <= limit:
        return rows
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group_id"], []).append(r)
    out, queues = [], list(by_group.values())
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


EXTERNAL_COLUMNS = ("driving", "target")  # required; optional: pair_id, reference, prompt, camera, keypoints, gt


def external_pairs(manifest: pd.DataFrame | None, manifest_path: str | Path) -> pd.DataFrame:
    """Pairs from a user manifest (CSV): one row per video to reproduce; paths relative to the manifest's folder.

    Columns: `driving` (video) and `target` (ground-truth video) are required; `reference` (image or video, default
    the target's first frame), `prompt` or `camera` (a vocabulary key; default static), `keypoints` (.npz of hand
    keypoints for the driving video), `gt` (a synthetic-style ground-truth .npz for pose accuracy) and `pair_id`
    are optional. Errors name the manifest, the row and the column."""
    if manifest is None or manifest.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    path = Path(manifest_path)
    missing = [c for c in EXTERNAL_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; required {list(EXTERNAL_COLUMNS)}, optional "
                         "pair_id, reference, prompt, camera, keypoints, gt")
    base = path.parent
    rows = []
    for i, r in enumerate(manifest.to_dict("records")):
        def file(col, required=False):
            value = r.get(col)
            if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
                if required:
                    raise ValueError(f"{path}: row {i + 1}: empty {col!r}")
                return None
            p = Path(str(value))
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise ValueError(f"{path}: row {i + 1}: {col} file {p} does not exist")
            return str(p)

        driving, target = file("driving", True), file("target", True)
        camera = r.get("camera") if isinstance(r.get("camera"), str) and r.get("camera") else None
        prompt = r.get("prompt") if isinstance(r.get("prompt"), str) and r.get("prompt").strip() else None
        try:
            text = inference.build_prompt(prompt, camera if prompt is None else None)
        except inference.InferenceError as err:
            raise ValueError(f"{path}: row {i + 1}: {err}") from None
        key = inference.camera_key(camera) if camera else ("static" if prompt is None else None)
        pid = r.get("pair_id") if isinstance(r.get("pair_id"), str) and r.get("pair_id") else f"ext-{i:04d}"
        rows.append({"pair_id": pid, "kind": "external", "driving_clip_id": Path(driving).stem,
                     "target_clip_id": Path(target).stem, "group_id": pid, "driving_path": driving,
                     "reference_path": file("reference") or target, "target_path": target,
                     "keypoints_path": file("keypoints"), "prompt": text, "camera_motion": key,
                     "camera_category": _category(key), "supervision": "external", "target_label_path": None,
                     "target_gt_path": file("gt")})
    out = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    dup = out["pair_id"][out["pair_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: duplicate pair_id values {dup}")
    return out


# ------------------------------------------------------------------ generation
def dimo_from_model(model, codec, text_spec: Mapping, device: str = "cpu") -> inference.Dimo:
    """An inference `Dimo` around an in-memory model (sweeps, ablations) with the text encoder it was trained with."""
    from dimo.models.text_encoder import from_spec

    return inference.Dimo(model, codec, from_spec(dict(text_spec)), device, source="in-memory")


def generate(dimo: inference.Dimo, pairs: pd.DataFrame, options: inference.Options | None = None,
             progress: bool = True) -> dict[str, np.ndarray]:
    """{pair_id: generated uint8 (T, H, W, 3)} for every pair, one `animate` call each (same seed for all).
    Unless the options fix them, the size is the reference's (the target's first frame) and the length the
    driving clip's, so a generated video lines up with its target at every scale."""
    opts = replace(options or inference.Options(), progress=False)
    out = {}
    for row in tqdm(list(pairs.itertuples()), desc="benchmark: generate", disable=not progress):
        job = inference.prepare_animate(row.reference_path, row.driving_path, prompt=row.prompt,
                                        keypoints=row.keypoints_path or None, fps=opts.fps)
        H, W = job.reference.shape[:2]
        fit = replace(opts, target_area=opts.target_area or H * W, max_frames=opts.max_frames or len(job.driving))
        out[row.pair_id] = dimo.run(job, None, fit).frames
    return out


def evaluate_model(model, codec, text_spec: Mapping, pairs: pd.DataFrame, options: inference.Options,
                   metrics: Sequence[str] | None = None, weights: M.WeightsConfig | Mapping | None = None,
                   label_params: dict | None = None, progress: bool = True, clips: Mapping | None = None,
                   device: str | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Generate and score every pair with an in-memory model (sweep trials, ablation variants): (scores, videos).
    `device`: where it samples (None: where the model is, e.g. the GPU it trained on; "auto": CUDA when present)."""
    where = inference.resolve_device(device) if device else next(model.parameters()).device
    videos = generate(dimo_from_model(model, codec, text_spec, where), pairs, options, progress)
    return score(pairs, videos, metrics, weights, label_params, progress=progress, clips=clips), videos


def side_by_side(reference: np.ndarray, driving: np.ndarray, generated: np.ndarray,
                 target: np.ndarray) -> np.ndarray:
    """reference | driving | generated | target, each (T, H, W, 3) at the target's size (reference: one image)."""
    T, H, W, _ = target.shape
    T = min(T, len(generated), len(driving))
    ref = np.repeat(video_io.resize_frames(reference[None], H, W), T, axis=0)
    parts = [ref, video_io.resize_frames(driving[:T], H, W), video_io.resize_frames(generated[:T], H, W), target[:T]]
    return np.concatenate(parts, axis=2)


def read_target(path: str | Path) -> np.ndarray:
    return video_io.read_video(path)[0]


def read_clip(clip_id: str, path: str | Path, clips: Mapping | None = None) -> np.ndarray:
    """A clip's frames: `clips[clip_id]()` (a catalog partition) when a mapping is given, else read from `path`."""
    if clips is None:
        return read_target(path)
    video = clip_table.load_clip(clips, clip_id, "the clip partitions (synthetic_clips / ingested_clips)")
    return np.asarray(getattr(video, "frames", video))


def target_frames(row, clips: Mapping | None = None) -> np.ndarray:
    """A pair's target: from the clip partitions by `target_clip_id`; an external row's user file by its path."""
    if clips is None or getattr(row, "kind", None) == "external":
        return read_target(row.target_path)
    return read_clip(row.target_clip_id, row.target_path, clips)


def align(generated: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same frame count (the shorter) and the target's size: a model may round sizes to its patch grid."""
    T = min(len(generated), len(target))
    gen, tgt = generated[:T], target[:T]
    if gen.shape[1:3] != tgt.shape[1:3]:
        gen = video_io.resize_frames(gen, *tgt.shape[1:3])
    return gen, tgt


# ------------------------------------------------------------------ scores
def score(pairs: pd.DataFrame, generated: Mapping[str, np.ndarray], metrics: Sequence[str] | None = None,
          weights: M.WeightsConfig | Mapping | None = None, label_params: dict | None = None,
          label_store=None, progress: bool = True, clips: Mapping | None = None) -> pd.DataFrame:
    """One row per pair: the pair's columns plus a column per per-pair metric (default: every registered one;
    NaN where unavailable, the reason in `unavailable`). With `label_params` (the pseudo_label parameters) also the
    pose metrics (pose accuracy and camera following)."""
    cfg = M.WeightsConfig.from_any(weights)
    metrics = registry.names("pair") if metrics is None else tuple(metrics)
    registry.check(metrics, "pair")
    missing = [p for p in pairs["pair_id"] if p not in generated]
    if missing:
        raise ValueError(f"no generated video for pairs {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    rows = []
    for row in tqdm(list(pairs.itertuples()), desc="benchmark: score", disable=not progress):
        gen, tgt = align(np.asarray(generated[row.pair_id]), target_frames(row, clips))
        out, reasons = {}, []
        for name in metrics:
            value = registry.get(name).compute(gen, tgt, cfg)
            if isinstance(value, MetricUnavailable):
                reasons.append(str(value))
                value = np.nan
            out[name] = float(value)
        rows.append({**row._asdict(), **out, "frames": len(gen), "unavailable": "; ".join(sorted(set(reasons)))})
    table = pd.DataFrame(rows).drop(columns=["Index"])
    if label_params is not None:
        table = table.merge(pose_and_camera(pairs, generated, label_params, label_store, progress), on="pair_id",
                            how="left")
    return table


def set_metrics(pairs: pd.DataFrame, generated: Mapping[str, np.ndarray],
                weights: M.WeightsConfig | Mapping | None = None, clips: Mapping | None = None
                ) -> dict[str, float | MetricUnavailable]:
    """Every registered set-level metric (FID over frames, FVD over 16-frame clips) of all generated videos
    against all targets."""
    cfg = M.WeightsConfig.from_any(weights)
    if pairs.empty:
        return {name: MetricUnavailable(name, "no pairs") for name in registry.names("set")}
    gens, tgts = zip(*(align(np.asarray(generated[r.pair_id]), target_frames(r, clips))
                       for r in pairs.itertuples()))
    return {name: registry.get(name).compute(list(gens), list(tgts), cfg) for name in registry.names("set")}


def codec_reference(pairs: pd.DataFrame, codec, metrics: Sequence[str] | None = None,
                    weights: M.WeightsConfig | Mapping | None = None, clips: Mapping | None = None
                    ) -> dict[str, float]:
    """What perfect latents would score: each distinct target encoded and decoded by the VAE alone, then scored
    like a generated video. A reference, not a bound: blur can beat a VAE's artefacts on PSNR."""
    import torch

    targets = pairs.drop_duplicates("target_clip_id")
    recon = {}
    for r in targets.itertuples():
        frames = target_frames(r, clips)
        x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            y = codec.decode(codec.encode(x))[0]
        recon[r.pair_id] = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    metrics = registry.names("pair") if metrics is None else tuple(metrics)
    table = score(targets, recon, metrics, weights, progress=False, clips=clips)
    return {"pairs": len(targets), **{m: float(table[m].mean()) for m in metrics}}


# ------------------------------------------------------------------ tables
def summarise(scores: pd.DataFrame, set_level: Mapping[str, Mapping[str, float | MetricUnavailable]] | None = None
              ) -> pd.DataFrame:
    """One row per group (every kind, and the cross-view pairs split into static and moving targets), a column
    per metric (means over pairs, each pair weighing the same); set-level FID/FVD per kind where given."""
    groups = [(kind, scores[scores["kind"] == kind]) for kind in scores["kind"].unique()]
    cross = scores[scores["kind"] == "cross_view"]
    if len(cross):
        static = cross["camera_category"] == "static"
        groups += [("cross_view / static camera", cross[static]), ("cross_view / moving camera", cross[~static])]
    cols = [c for c in registry.names() if c in scores.columns]
    rows = []
    for name, part in groups:
        if part.empty:
            continue
        row = {"benchmark": name, "pairs": len(part), **{c: part[c].mean() for c in cols}}
        for key, value in (set_level or {}).get(name, {}).items():
            row[key] = np.nan if isinstance(value, MetricUnavailable) else float(value)
        rows.append(row)
    table = pd.DataFrame(rows)
    order = ["benchmark", "pairs"] + [c for c in registry.names() if c in table.columns]
    return table[order] if len(table) else table


def markdown(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """The summary table in markdown, each metric column headed with its direction (`psnr ↑`)."""
    arrows = {m.name: f"{m.name} {m.arrow}" for m in registry.METRICS.values()}
    body = table.rename(columns=arrows).to_markdown(index=False, floatfmt=".4g") if len(table) else "(no pairs)"
    return "\n".join([f"## {title}", "", body, "", *[f"- {n}" for n in notes], ""])
