"""ingest + validate on good and broken inputs: every bad input ends as a quarantine row or a clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro_datasets.partitions import PartitionedDataset

from dimo import clip_table
from dimo.datasets import OptionalPartitionedDataset
from dimo.pipelines.ingest.nodes import ingest_videos
from dimo.pipelines.validate.nodes import (
    apply_validation_gate,
    combine_clip_tables,
    profile_clips,
    run_expectation_suite,
)
from tests.conftest import PROJECT_ROOT

SMOKE = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), env="smoke", base_env="base",
                          default_run_env="local")["parameters"]


def params(tmp_path: Path):
    ingest = {**SMOKE["ingest"], "raw_dir": str(tmp_path / "raw"), "clips_dir": str(tmp_path / "clips"),
              "manifest_path": str(tmp_path / "raw" / "manifest.csv")}
    return ingest, dict(SMOKE["validate"])


def clip_folder(ingest_params: dict) -> OptionalPartitionedDataset:
    """The catalog's `ingested_clips`: partition id = clip id."""
    return OptionalPartitionedDataset(path=ingest_params["clips_dir"], dataset="dimo.datasets.VideoDataset",
                                      filename_suffix=".mp4", overwrite=True)


def run_ingest(raw: Path, ingest_params: dict, manifest: pd.DataFrame | None = None):
    videos = PartitionedDataset(path=str(raw), dataset="dimo.datasets.VideoDataset").load()
    table, clips, rejects = ingest_videos(videos, manifest, ingest_params)
    if clips:
        clip_folder(ingest_params).save(clips)
    return table, rejects


def run_validate(table: pd.DataFrame, rejects: pd.DataFrame, validate_params: dict, ingested_clips=None):
    """validate's nodes as the pipeline wires them; no synthetic source exists (its table and folder: None)."""
    candidates = combine_clip_tables(table, None, {**validate_params, "sources": ["user", "synthetic"]})
    if ingested_clips is None and len(table):
        ingested_clips = clip_folder({"clips_dir": str(Path(table["path"].iloc[0]).parent)}).load()
    profile = profile_clips(candidates, None, ingested_clips, validate_params)
    quarantine, report, _ = run_expectation_suite(profile, rejects, validate_params)
    return profile, quarantine, report


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_good_video_becomes_synchronised_1_plus_4k_clips(tmp_path, write_clip):
    ingest_p, validate_p = params(tmp_path)
    write_clip(tmp_path / "raw" / "walk.mp4", n=75, fps=30)  # 2.5 s -> 40 frames at 16 fps -> 2 windows of 17
    table, rejects = run_ingest(tmp_path / "raw", ingest_p)
    assert len(rejects) == 0 and list(table["clip_id"]) == ["walk-w000", "walk-w001"]
    assert list(table.columns[: len(clip_table.COLUMNS)]) == list(clip_table.COLUMNS)
    assert set(table["num_frames"]) == {17} and set(table["fps"]) == {16.0}
    assert (table["height"] % 16 == 0).all() and (table["width"] % 16 == 0).all()
    assert list(table["start_frame"]) == [0, 17]
    profile, quarantine, _ = run_validate(table, rejects, validate_p)
    assert quarantine.empty, quarantine.to_string()
    assert list(profile["observed_frames"]) == [17, 17]
    valid, metrics = apply_validation_gate(profile, quarantine, validate_p)
    assert len(valid) == 2 and metrics["clips_valid"]["value"] == 2


def zero_frame_mp4(path: Path) -> None:
    with av.open(str(path), "w") as container:  # a valid container whose video stream has no frames
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # writes the header, then closes with no frame
    assert path.stat().st_size > 0


def test_broken_inputs_are_quarantined_with_reasons_and_never_touched(tmp_path, write_clip):
    ingest_p, validate_p = params(tmp_path)
    raw = tmp_path / "raw"
    good = write_clip(raw / "good.mp4", n=20)
    truncated = raw / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    zero_frame_mp4(raw / "empty.mp4")
    (raw / "notes.webm").write_text("this is a text file with a video extension\n" * 10)
    write_clip(raw / "short.mp4", n=8)  # 8 frames < one 17-frame window
    before = digest(raw)

    table, rejects = run_ingest(raw, ingest_p)
    reasons = dict(zip(rejects["path"].map(lambda p: Path(p).name), rejects["expectation"]))
    assert reasons.pop("short.mp4") == "at_least_one_window_of_17_frames"
    assert reasons == {"truncated.mp4": "decodable", "empty.mp4": "decodable", "notes.webm": "decodable"}
    observed = dict(zip(rejects["path"].map(lambda p: Path(p).name), rejects["observed"]))
    assert any(s in observed["empty.mp4"] for s in ("zero decodable frames", "no video stream"))
    assert "truncated.mp4" in observed["truncated.mp4"]
    assert list(table["clip_id"]) == ["good-w000"]

    profile, quarantine, report = run_validate(table, rejects, validate_p)
    assert set(quarantine["stage"]) == {"ingest"} and len(quarantine) == 4
    assert "notes.webm" in report and "decodable" in report
    valid, _ = apply_validation_gate(profile, quarantine, {**validate_p, "max_failure_ratio": 0.9})
    assert list(valid["clip_id"]) == ["good-w000"]
    with pytest.raises(ValueError, match=r"4 of 5 inputs failed \(80%\).*max_failure_ratio"):
        apply_validation_gate(profile, quarantine, {**validate_p, "max_failure_ratio": 0.5})
    assert digest(raw) == before  # raw data is read, never changed or removed


def manifest_frame(**overrides) -> pd.DataFrame:
    rows = [{"path": "a.mp4", "group_id": "g1", "view_id": "0", "camera_motion": "Static",
             "caption": "A person waves. The camera remains static.", "split": "train"},
            {"path": "b.mp4", "group_id": "g1", "view_id": "1", "camera_motion": "Arc Left 30",
             "caption": "A person waves. The camera arcs 30 degrees to the left around the subject.", "split": "train"}]
    return pd.DataFrame(rows).assign(**overrides)


def test_manifest_missing_column_is_refused_naming_file_and_column(tmp_path, write_clip):
    ingest_p, _ = params(tmp_path)
    write_clip(tmp_path / "raw" / "a.mp4", n=20)
    with pytest.raises(ValueError, match=r"manifest\.csv: missing required column\(s\) \['camera_motion'\]"):
        run_ingest(tmp_path / "raw", ingest_p, manifest_frame().drop(columns=["camera_motion"]))


def test_unknown_camera_label_and_group_length_mismatch_are_quarantined(tmp_path, write_clip):
    ingest_p, validate_p = params(tmp_path)
    raw = tmp_path / "raw"
    write_clip(raw / "a.mp4", n=20, seed=1)
    write_clip(raw / "b.mp4", n=26, seed=2)  # same group, more frames: not synchronised
    write_clip(raw / "c.mp4", n=20, seed=3)
    manifest = pd.concat([manifest_frame(), pd.DataFrame([{
        "path": "c.mp4", "group_id": "g2", "view_id": "0", "camera_motion": "barrel roll",
        "caption": "A person spins.", "split": "train"}])], ignore_index=True)
    table, rejects = run_ingest(raw, ingest_p, manifest)
    assert dict(zip(table["clip_id"], table["supervision"])) == {
        "a-w000": "moving_camera", "b-w000": "moving_camera", "c-w000": "single_view"}
    assert table.set_index("clip_id").loc["b-w000", "camera_motion"] == "arc_left_30"

    _, quarantine, _ = run_validate(table, rejects, validate_p)
    by_clip = quarantine.groupby("clip_id")["expectation"].apply(list).to_dict()
    assert any("camera_motion" in e or "in_set" in e for e in by_clip["c-w000"])
    camera_row = quarantine[(quarantine.clip_id == "c-w000") & (quarantine.column == "camera_motion")]
    assert camera_row["observed"].tolist() == ["barrel roll"]
    spread = quarantine[quarantine.column == "group_frame_spread"]
    assert sorted(spread["clip_id"]) == ["a-w000", "b-w000"] and set(spread["observed"]) == {"6"}


def test_blank_frozen_and_lonely_multiview_clips_are_quarantined(tmp_path, write_clip):
    ingest_p, validate_p = params(tmp_path)
    raw = tmp_path / "raw"
    write_clip(raw / "black.mp4", n=20, kind="blank")
    write_clip(raw / "still.mp4", n=20, kind="frozen")
    write_clip(raw / "ok.mp4", n=20)
    manifest = pd.DataFrame([
        {"path": "black.mp4", "group_id": "b", "view_id": "0", "camera_motion": "static", "caption": "x",
         "split": "train"},
        {"path": "still.mp4", "group_id": "s", "view_id": "0", "camera_motion": "static", "caption": "x",
         "split": "train"},
        {"path": "ok.mp4", "group_id": "o", "view_id": "0", "camera_motion": "static", "caption": "x", "split": "val",
         "supervision": "multi_view"}])
    table, rejects = run_ingest(raw, ingest_p, manifest)
    _, quarantine, _ = run_validate(table, rejects, validate_p)
    cols = quarantine.groupby("clip_id")["column"].apply(set).to_dict()
    assert "pixel_std" in cols["black-w000"]
    assert "motion_energy" in cols["still-w000"] and "pixel_std" not in cols["still-w000"]
    assert cols["ok-w000"] == {"group_size"}  # a multi-view group needs >= 2 views


def test_empty_input_fails_with_a_clear_message(tmp_path):
    _, validate_p = params(tmp_path)
    profile = profile_clips(clip_table.empty(), None, None, validate_p)
    quarantine, report, _ = run_expectation_suite(profile, clip_table.empty(clip_table.REJECT_COLUMNS), validate_p)
    with pytest.raises(ValueError, match="no valid clip remains"):
        apply_validation_gate(profile, quarantine, validate_p)


def test_clip_row_without_a_clip_file_is_quarantined_naming_the_clip(tmp_path, write_clip):
    ingest_p, validate_p = params(tmp_path)
    write_clip(tmp_path / "raw" / "walk.mp4", n=75, fps=30)
    table, rejects = run_ingest(tmp_path / "raw", ingest_p)
    clips = clip_folder(ingest_p).load()
    assert sorted(clips) == ["walk-w000", "walk-w001"]  # partition id = clip id
    del clips["walk-w001"]  # the table lists it, the folder does not hold it
    profile, quarantine, report = run_validate(table, rejects, validate_p, ingested_clips=clips)
    assert list(profile["decodable"]) == [True, False]
    row = quarantine[quarantine["clip_id"] == "walk-w001"]
    assert row["column"].tolist() == ["decodable"] and "walk-w001" in row["observed"].iloc[0]
    assert "walk-w000" not in set(quarantine["clip_id"])
    # No folder at all (no user clips yet) while the table lists clips: each row quarantined, none skipped.
    _, quarantine, _ = run_validate(table, rejects, validate_p, ingested_clips={})
    assert sorted(quarantine["clip_id"]) == ["walk-w000", "walk-w001"]
    assert quarantine["observed"].str.contains("has no file in synthetic_clips / ingested_clips").all()


def test_no_user_videos_folder_gives_no_user_clips(tmp_path):
    ingest_p, _ = params(tmp_path)
    raw = OptionalPartitionedDataset(path=str(tmp_path / "raw"), dataset="dimo.datasets.VideoDataset").load()
    assert raw is None  # the catalog's raw_videos when data/01_raw/videos does not exist
    table, clips, rejects = ingest_videos(raw, None, ingest_p)
    assert table.empty and clips == {} and rejects.empty
    assert list(table.columns) == list(clip_table.COLUMNS)
