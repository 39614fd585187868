"""Nodes of `pseudo_label`: label (cached) -> gate (clip thresholds + great-expectations) -> labelled clip table,
and the accuracy report against synthetic ground truth."""

from __future__ import annotations

import logging
from functools import partial

import pandas as pd

from dimo import clip_table, distributed
from dimo.labelling import accuracy, labeller, multiview, quality
from dimo.labelling import label_format as lf

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["clip_id", "path", "content_hash", "label_path", "cache_hit", "body_model", "num_frames",
                 "person_ratio", "coverage", "blank_ratio", "multi_person_ratio", "hand_coverage_left",
                 "hand_coverage_right", "mean_confidence", "jitter", "fit_error_3d_mm", "fit_error_2d_px",
                 "detect_seconds", "fit_seconds"]


def label_clips(clips: pd.DataFrame, synthetic_clips: dict | None, ingested_clips: dict | None,
                store: labeller.LabelStore, params: dict, ground_truth: dict | None = None):
    """Label every validated clip, read through the clip folders by clip id (cache hits are read back); one
    index row per clip and one row per frame. A clip id no folder holds is an error naming it. Groups of
    synchronised views with known cameras (`synthetic_ground_truth` or camera_params) are fitted jointly."""
    loaders = clip_table.clip_loaders(synthetic_clips, ingested_clips)
    records = clips[["clip_id", "path", "fps", "num_frames"]].to_dict("records") if len(clips) else []
    clip_table.check_clips([r["clip_id"] for r in records], loaders, "synthetic_clips / ingested_clips")
    for r in records:
        r["load"] = partial(clip_table.load_clip, loaders, r["clip_id"])
    multiview.attach_cameras(records, clips, ground_truth)
    if distributed.runner(params, "pseudo_label") == "ray":  # docs/ray.md; Ray is imported only there
        from dimo.labelling import ray_labeller

        rows = ray_labeller.label_clips(records, store, params)
    else:
        rows = labeller.label_clips(records, store, params, progress=params.get("progress", True))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS) if rows else pd.DataFrame(columns=INDEX_COLUMNS)
    frames = [pd.DataFrame(labeller.frame_table_rows(r["clip_id"], lf.load_label(r["label_path"]))) for r in rows]
    frame_table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=list(labeller.frame_table_rows("x", lf.make_label(1, "anny"))))
    hits = int(index["cache_hit"].sum()) if len(index) else 0
    log.info("pseudo_label: %d clips (%d from the cache), %d frames", len(index), hits, len(frame_table))
    return index, frame_table


def gate_labels(index: pd.DataFrame, frames: pd.DataFrame, params: dict) -> tuple[pd.DataFrame, dict]:
    if not len(index):
        return quality.empty_quarantine(), {"success": True, "suites": {}}
    return quality.quarantine(index, frames, params["gates"])


def apply_label_gate(clips: pd.DataFrame, index: pd.DataFrame, quarantine: pd.DataFrame, params: dict):
    """Validated clips whose labels passed, with their label path; metrics for MLflow."""
    bad = set(quarantine["clip_id"].dropna()) if len(quarantine) else set()
    merged = clips.merge(index[["clip_id", "label_path", "content_hash", "coverage", "hand_coverage_left",
                                "hand_coverage_right"]], on="clip_id", how="left") if len(clips) else clips
    keep = merged[~merged["clip_id"].isin(bad)].reset_index(drop=True) if len(merged) else merged
    n = len(index)
    metrics = {
        "label_clips": {"value": float(n), "step": 0},
        "label_clips_passed": {"value": float(len(keep)), "step": 0},
        "label_clips_quarantined": {"value": float(len(bad)), "step": 0},
        "label_cache_hits": {"value": float(index["cache_hit"].sum()) if n else 0.0, "step": 0},
        "label_frame_coverage": {"value": float(index["coverage"].mean()) if n else 0.0, "step": 0},
        "label_person_ratio": {"value": float(index["person_ratio"].mean()) if n else 0.0, "step": 0},
    }
    if n and "source" in clips:
        user = index[index["clip_id"].isin(clips.loc[clips["source"] == "user", "clip_id"])]
        if len(user):
            metrics["label_user_detection_coverage"] = {"value": float(user["person_ratio"].mean()), "step": 0}
    if len(bad):
        log.warning("pseudo_label: %d of %d clips quarantined: %s", len(bad), n,
                    quarantine.groupby("check").size().to_dict())
    return keep, metrics


def evaluate_label_accuracy(clips: pd.DataFrame, index: pd.DataFrame, ground_truth: dict | None, params: dict):
    """MPJPE / PA-MPJPE / hand error / detection rate by camera azimuth on synthetic clips (skipped without),
    against their ground truth read through `synthetic_ground_truth` by clip id."""
    from dimo.labelling.body_models import make_backend

    cfg = params.get("accuracy", {})
    ground_truth = ground_truth or {}
    syn = clips[(clips.get("source") == "synthetic") & clips["gt_path"].notna()] if len(clips) else clips
    syn = syn.merge(index[["clip_id", "label_path"]], on="clip_id") if len(syn) else syn
    per_clip, az, views = [], [], []
    sizes = clips.groupby("group_id").size().to_dict() if len(clips) and "group_id" in clips else {}
    backend = make_backend(params) if len(syn) else None
    for _, row in syn.iterrows():
        if row["clip_id"] not in ground_truth:
            log.warning("pseudo_label accuracy: clip %s has no ground truth in synthetic_ground_truth",
                        row["clip_id"])
            continue
        gt = ground_truth[row["clip_id"]]()
        label = lf.load_label(row["label_path"])
        if str(label["body_model"]) == backend.name == "anny":
            label["fit_hand_points"] = labeller.fitted_hand_points(backend, label)[0]
        per_clip.append(accuracy.clip_accuracy(label, gt))
        az.append(float(row["azimuth_deg"]) if "azimuth_deg" in row and pd.notna(row["azimuth_deg"]) else 0.0)
        views.append("multi_view" if sizes.get(row["group_id"], 1) > 1 else "single_view")
    width = float(cfg.get("azimuth_bin_deg", 45))
    summary = accuracy.summarise(per_clip, az, width)
    # Synchronised groups (fused) and lone views, apart: the two regimes have different accuracy.
    for kind in ("multi_view", "single_view"):
        part = [i for i, v in enumerate(views) if v == kind]
        if part:
            sub = accuracy.summarise([per_clip[i] for i in part], [az[i] for i in part], width)
            summary[kind] = {k: v for k, v in sub.items() if isinstance(v, (int, float))}
    metrics = {f"label_acc_{k}": {"value": float(v), "step": 0} for k, v in summary.items()
               if isinstance(v, (int, float))}
    for kind in ("multi_view", "single_view"):
        metrics.update({f"label_acc_{kind}_{k}": {"value": float(v), "step": 0}
                        for k, v in summary.get(kind, {}).items()})
    for b, v in summary.get("detection_rate_by_azimuth", {}).items():
        metrics[f"label_acc_detection_rate_az{b}"] = {"value": float(v), "step": 0}
    if not per_clip:
        summary["note"] = "no synthetic clips with ground truth: accuracy not measured"
    fig = accuracy.plot(summary)
    return summary, metrics, fig
