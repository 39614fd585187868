"""Validate the clip table with a great-expectations suite; quarantine failing clips with their reasons."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dimo import camera_vocabulary, clip_table, video_io

log = logging.getLogger(__name__)

PROFILE_COLUMNS = ["decodable", "decode_error", "observed_fps", "observed_frames", "observed_height",
                   "observed_width", "pixel_std", "motion_energy"]


def combine_clip_tables(ingested: pd.DataFrame, synthetic: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The clips of every configured source (user videos, the synthetic set) in one table."""
    tables = {"user": ingested, "synthetic": synthetic}
    chosen = [clip_table.conform(tables[s]) for s in params["sources"] if tables[s] is not None and len(tables[s])]
    if not chosen:
        return clip_table.empty()
    return clip_table.conform(pd.concat(chosen, ignore_index=True))


def _content_stats(frames: np.ndarray) -> tuple[float, float]:
    """Mean per-frame pixel std (blank when ~0) and mean absolute change between frames (frozen when ~0)."""
    f = frames.astype(np.float32)
    pixel_std = float(f.reshape(len(f), -1).std(axis=1).mean())
    motion = float(np.abs(np.diff(f, axis=0)).mean()) if len(f) > 1 else 0.0
    return pixel_std, motion


def profile_clips(table: pd.DataFrame, synthetic_clips: dict | None, ingested_clips: dict | None,
                  params: dict) -> pd.DataFrame:
    """Decode every clip once (through the clip folders' partitions, by clip id) and add what the suite checks:
    observed fps/size/length, content statistics, and per-group facts (views per group, frame-count spread).
    A clip that cannot be read, or whose clip id no folder holds, is undecodable with the reason."""
    loaders = clip_table.clip_loaders(synthetic_clips, ingested_clips)
    stats = []
    for clip_id in tqdm(table["clip_id"], desc="profile clips", disable=len(table) < 2):
        try:
            frames, fps = clip_table.load_clip(loaders, clip_id, "synthetic_clips / ingested_clips")[:2]
            std, motion = _content_stats(frames)
            stats.append((True, "", fps, len(frames), frames.shape[1], frames.shape[2], std, motion))
        except (video_io.VideoReadError, FileNotFoundError, clip_table.MissingClipError) as err:
            stats.append((False, str(err), np.nan, 0, 0, 0, np.nan, np.nan))
    prof = pd.concat([table.reset_index(drop=True), pd.DataFrame(stats, columns=PROFILE_COLUMNS)], axis=1)
    prof = prof.astype({"decodable": bool, "observed_frames": "int64", "observed_height": "int64",
                        "observed_width": "int64", "decode_error": "string"})
    prof["area"] = prof["height"] * prof["width"]
    prof["aspect"] = prof["width"] / prof["height"].where(prof["height"] > 0)
    prof["frames_mod4"] = (prof["num_frames"] - 1) % 4
    groups = prof.groupby("group_id")
    prof["group_size"] = groups["clip_id"].transform("count").astype("int64")
    prof["group_frame_spread"] = (groups["source_frames"].transform("max") - groups["source_frames"].transform("min"))
    prof["group_frame_spread"] = prof["group_frame_spread"].fillna(0).astype("int64")
    return prof


def build_suite(params: dict):
    """The clip-table expectation suite (great-expectations 1.x)."""
    import great_expectations as gx  # imported lazily: ~3 s
    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations
    area, tol = params["target_area"], params["area_tolerance"]
    fps = params["fps"]
    suite = gx.ExpectationSuite(name="clip_table")
    for exp in [
        E.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
        E.ExpectColumnValuesToBeBetween(column="observed_fps", min_value=fps - params["fps_tolerance"],
                                        max_value=fps + params["fps_tolerance"]),
        E.ExpectColumnPairValuesToBeEqual(column_A="observed_frames", column_B="num_frames"),
        E.ExpectColumnValuesToBeInSet(column="frames_mod4", value_set=[0]),
        E.ExpectColumnValuesToBeBetween(column="num_frames", min_value=params["min_frames"]),
        E.ExpectColumnValuesToBeBetween(column="area", min_value=area * (1 - tol), max_value=area * (1 + tol)),
        E.ExpectColumnValuesToBeBetween(column="aspect", min_value=params["min_aspect"],
                                        max_value=params["max_aspect"]),
        E.ExpectColumnValuesToBeUnique(column="path"),
        E.ExpectColumnValuesToNotBeNull(column="caption"),
        E.ExpectColumnValueLengthsToBeBetween(column="caption", min_value=1),
        E.ExpectColumnValuesToNotBeNull(column="camera_motion"),
        E.ExpectColumnValuesToBeInSet(column="camera_motion", value_set=camera_vocabulary.keys()),
        E.ExpectColumnValuesToBeInSet(column="supervision", value_set=list(clip_table.SUPERVISION_KINDS)),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(clip_table.SPLITS)),
        E.ExpectColumnValuesToBeBetween(column="group_frame_spread", max_value=0),
        E.ExpectColumnValuesToBeBetween(column="group_size", min_value=2,
                                        row_condition=Column("supervision") != "single_view"),
        # Content: a blank clip has ~no pixel variance, a frozen clip ~no change between frames.
        E.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=params["min_pixel_std"]),
        E.ExpectColumnValuesToBeBetween(column="motion_energy", min_value=params["min_motion_energy"]),
    ]:
        suite.add_expectation(exp)
    return suite


def _describe(config) -> tuple[str, str]:
    kw = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    column = kw.pop("column", None) or f"{kw.pop('column_A', '')},{kw.pop('column_B', '')}"
    args = ", ".join(f"{k}={v}" for k, v in kw.items()
                     if k not in ("condition_parser", "row_condition") and v is not None)
    if isinstance(kw.get("value_set"), list) and len(kw["value_set"]) > 5:
        args = f"value_set=<{len(kw['value_set'])} allowed values>"
    return f"{config.type}({args})", column


def run_expectation_suite(profile: pd.DataFrame, ingest_rejects: pd.DataFrame, params: dict):
    """Run the suite; every failing (clip, expectation) becomes a quarantine row with the observed value."""
    import great_expectations as gx

    rows = []
    results_json: dict = {"success": True, "results": []}
    if len(profile):
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False}
        batch_def = (context.data_sources.add_pandas("clips").add_dataframe_asset("clip_table")
                     .add_batch_definition_whole_dataframe("all"))
        suite = context.suites.add(build_suite(params))
        # Undecodable clips have no observations: only the decodable expectation speaks for them.
        result = batch_def.get_batch(batch_parameters={"dataframe": profile}).validate(
            suite, result_format={"result_format": "COMPLETE"})
        results_json = result.to_json_dict()
        for res in result.results:
            name, column = _describe(res.expectation_config)
            observed = res.result.get("unexpected_list") or []
            for i, idx in enumerate(res.result.get("unexpected_index_list") or []):
                clip = profile.loc[idx]
                if not clip["decodable"] and res.expectation_config.type != "expect_column_values_to_be_in_set":
                    continue
                value = clip["decode_error"] if not clip["decodable"] else (observed[i] if i < len(observed) else "")
                rows.append({"clip_id": clip["clip_id"], "path": clip["path"], "stage": "validate",
                             "expectation": name, "column": column, "observed": str(value)})
    quarantine = pd.concat([clip_table.conform(pd.DataFrame(rows), clip_table.REJECT_COLUMNS) if rows else
                            clip_table.empty(clip_table.REJECT_COLUMNS),
                            clip_table.conform(ingest_rejects, clip_table.REJECT_COLUMNS)], ignore_index=True)
    report = render_report(profile, quarantine, params)
    return quarantine, report, results_json


def render_report(profile: pd.DataFrame, quarantine: pd.DataFrame, params: dict) -> str:
    n_bad = quarantine.loc[quarantine["stage"] == "validate", "clip_id"].nunique()
    lines = ["# Clip validation report", "",
             f"- clips checked: {len(profile)}", f"- clips passing every expectation: {len(profile) - n_bad}",
             f"- clips quarantined: {n_bad}",
             f"- inputs rejected at ingest: {(quarantine['stage'] == 'ingest').sum()}",
             f"- allowed failure ratio: {params['max_failure_ratio']}", ""]
    if len(quarantine):
        counts = quarantine.groupby(["stage", "expectation"]).size().rename("clips").reset_index()
        lines += ["## Failures by expectation", "", counts.to_markdown(index=False), "",
                  "## Quarantine", "", quarantine.to_markdown(index=False), ""]
    else:
        lines += ["All clips passed.", ""]
    if len(profile):
        by = profile.groupby(["source", "supervision"]).size().rename("clips").reset_index()
        lines += ["## Clips by source and supervision", "", by.to_markdown(index=False), ""]
    return "\n".join(lines)


def apply_validation_gate(profile: pd.DataFrame, quarantine: pd.DataFrame, params: dict):
    """The validated table, or a clear failure when nothing valid remains or too many clips failed."""
    bad_ids = set(quarantine.loc[quarantine["stage"] == "validate", "clip_id"].dropna())
    n_inputs = len(profile) + int((quarantine["stage"] == "ingest").sum())
    n_failed = len(bad_ids) + int((quarantine["stage"] == "ingest").sum())
    valid = profile[~profile["clip_id"].isin(bad_ids)]
    ratio = n_failed / n_inputs if n_inputs else 0.0
    if valid.empty:
        raise ValueError(f"validate: no valid clip remains ({n_failed} of {n_inputs} inputs failed); "
                         "see the clip_quarantine table and validation_report for the reasons")
    if ratio > params["max_failure_ratio"]:
        raise ValueError(f"validate: {n_failed} of {n_inputs} inputs failed ({ratio:.0%}), above "
                         f"max_failure_ratio={params['max_failure_ratio']}; see clip_quarantine for the reasons")
    metrics = {"clips_valid": {"value": float(len(valid)), "step": 0},
               "clips_quarantined": {"value": float(n_failed), "step": 0},
               "failure_ratio": {"value": float(ratio), "step": 0}}
    log.info("validate: %d valid clips, %d quarantined (%.1f%%)", len(valid), n_failed, 100 * ratio)
    return clip_table.conform(valid[list(clip_table.COLUMNS) + [c for c in valid.columns
                                                                 if c not in clip_table.COLUMNS
                                                                 and c not in PROFILE_COLUMNS]]), metrics
