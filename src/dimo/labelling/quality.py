"""Quality gates on pseudo labels: clip-level thresholds (blank video, person coverage, second person, jitter,
fit error) and a great-expectations 1.x suite over the per-frame label table (finite values, joint-angle
ranges, confidence range) and the per-clip table (coverage). Every failure becomes a quarantine row
(clip_id, path, stage, check, column, observed); nothing is dropped silently."""

from __future__ import annotations

import pandas as pd

QUARANTINE_COLUMNS = {"clip_id": "string", "path": "string", "stage": "string", "check": "string",
                      "column": "string", "observed": "string"}

# Clip-level gates: check name -> (column, comparison, parameter). Order = priority of the reported reason.
CLIP_GATES = (
    ("blank_video", "blank_ratio", "max", "max_blank_ratio"),
    ("multi_person", "multi_person_ratio", "max", "max_multi_person_ratio"),
    ("person_coverage", "coverage", "min", "min_coverage"),
    ("jitter", "jitter", "max", "max_jitter"),
    ("fit_error", "fit_error_3d_mm", "max", "max_fit_error_mm"),
)


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in QUARANTINE_COLUMNS.items()})


def clip_gates(index: pd.DataFrame, gates: dict) -> pd.DataFrame:
    rows = []
    for check, column, kind, key in CLIP_GATES:
        limit = gates.get(key)
        if limit is None or column not in index:
            continue
        bad = index[column] > limit if kind == "max" else index[column] < limit
        # Fit error / jitter mean nothing for a clip without a usable frame: coverage reports that one.
        if check in ("jitter", "fit_error"):
            bad &= index["coverage"] > 0
        for _, r in index[bad].iterrows():
            rows.append({"clip_id": r["clip_id"], "path": r["path"], "stage": "pseudo_label", "check": check,
                         "column": column, "observed": f"{r[column]:.4g} ({'>' if kind == 'max' else '<'} {limit})"})
    return pd.DataFrame(rows).astype(QUARANTINE_COLUMNS) if rows else empty_quarantine()


def build_suites(gates: dict):
    """(frame-table suite, clip-table suite)."""
    import great_expectations as gx  # lazily: ~3 s

    E = gx.expectations
    frames = gx.ExpectationSuite(name="pseudo_label_frames")
    for exp in [
        E.ExpectColumnValuesToBeInSet(column="theta_finite", value_set=[True]),
        E.ExpectColumnValuesToNotBeNull(column="fit_error_3d_mm"),
        E.ExpectColumnValuesToNotBeNull(column="confidence"),
        E.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0),
        E.ExpectColumnValuesToBeBetween(column="body_angle_max_deg", min_value=0.0,
                                        max_value=gates["max_body_angle_deg"]),
        E.ExpectColumnValuesToBeBetween(column="hand_angle_max_deg", min_value=0.0,
                                        max_value=gates["max_hand_angle_deg"]),
        E.ExpectColumnValuesToBeBetween(column="fit_error_3d_mm", min_value=0.0),
    ]:
        frames.add_expectation(exp)
    clips = gx.ExpectationSuite(name="pseudo_label_clips")
    for exp in [
        E.ExpectColumnValuesToBeUnique(column="clip_id"),
        E.ExpectColumnValuesToBeBetween(column="coverage", min_value=gates["min_coverage"], max_value=1.0),
        E.ExpectColumnValuesToNotBeNull(column="label_path"),
    ]:
        clips.add_expectation(exp)
    return frames, clips


def _validate(ctx, df: pd.DataFrame, suite, name: str):
    bd = ctx.data_sources.add_pandas(f"p_{name}").add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(suite)
    return bd.get_batch(batch_parameters={"dataframe": df}).validate(suite, result_format={"result_format": "COMPLETE"})


def run_suite(frames: pd.DataFrame, index: pd.DataFrame, gates: dict) -> tuple[pd.DataFrame, dict]:
    """GE over both tables; one quarantine row per failing (clip, expectation) with the worst observed value."""
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")  # suites can only be built once a context exists
    ctx.variables.progress_bars = {"globally": False}
    frame_suite, clip_suite = build_suites(gates)
    rows, results = [], {"success": True, "suites": {}}
    paths = dict(zip(index["clip_id"], index["path"])) if len(index) else {}
    for df, suite, name in ((frames, frame_suite, "frames"), (index, clip_suite, "clips")):
        if not len(df):
            continue
        res = _validate(ctx, df.reset_index(drop=True), suite, name)
        results["suites"][name] = res.to_json_dict()
        results["success"] &= bool(res.success)
        for r in res.results:
            if r.success:
                continue
            cfg = r.expectation_config
            column = cfg.kwargs.get("column", "")
            bad_idx = r.result.get("unexpected_index_list") or []
            values = r.result.get("unexpected_list") or []
            per_clip: dict[str, list] = {}
            for i, idx in enumerate(bad_idx):
                per_clip.setdefault(df.loc[idx, "clip_id"], []).append(values[i] if i < len(values) else None)
            for clip_id, vals in per_clip.items():
                sample = vals[0]
                rows.append({"clip_id": clip_id, "path": paths.get(clip_id, ""), "stage": "pseudo_label",
                             "check": cfg.type, "column": column,
                             "observed": f"{len(vals)} rows, e.g. {sample}"})
    q = pd.DataFrame(rows).astype(QUARANTINE_COLUMNS) if rows else empty_quarantine()
    return q, results


def quarantine(index: pd.DataFrame, frames: pd.DataFrame, gates: dict) -> tuple[pd.DataFrame, dict]:
    """Clip gates + the GE suite, merged (a clip may have several reasons)."""
    q1 = clip_gates(index, gates)
    # Frames that are not valid carry rest rotations and zero errors by construction: GE checks valid frames.
    q2, results = run_suite(frames[frames["valid"]] if len(frames) else frames, index, gates)
    q = pd.concat([q1, q2], ignore_index=True).drop_duplicates(["clip_id", "check", "column"]).reset_index(drop=True)
    return q.astype(QUARANTINE_COLUMNS), results
