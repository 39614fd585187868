"""The benchmark: which pairs, external manifests, scores (targets from the clip partitions), pose accuracy and camera
following with known answers, the metric registry driving scores and tables, and the `evaluate` pipeline run in
the smoke chain (a registered model generates, the tables reach MLflow)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from dimo import clip_table, video_io
from dimo.datasets import Video
from dimo.evaluation import benchmark, registry
from dimo.evaluation import metrics as M


def clips() -> pd.DataFrame:
    rows = [("s0", "a", "single_view", "static", "test"), ("s1", "b", "single_view", "zoom_in", "train")]
    rows += [(f"m{v}", "mv", "multi_view", "static", "test") for v in range(3)]
    rows += [(f"c{v}", "mc", "moving_camera", m, "test") for v, m in enumerate(("arc_left_30", "zoom_in"))]
    table = pd.DataFrame(rows, columns=["clip_id", "group_id", "supervision", "camera_motion", "split"])
    return table.assign(path=[f"{c}.mp4" for c in table["clip_id"]],
                        caption="A person moves. The camera remains static.", label_path=None, gt_path=None)


def test_benchmark_pairs_are_every_clip_and_every_ordered_view_pair_of_the_split():
    pairs = benchmark.benchmark_pairs(clips(), "test")
    recon, cross = pairs[pairs["kind"] == "reconstruction"], pairs[pairs["kind"] == "cross_view"]
    assert sorted(recon["target_clip_id"]) == ["c0", "c1", "m0", "m1", "m2", "s0"]  # s1 is train
    assert (recon["driving_clip_id"] == recon["target_clip_id"]).all()
    assert len(cross) == 3 * 2 + 2 * 1  # ordered pairs inside the multi-view and the moving-camera group
    assert (cross["driving_clip_id"] != cross["target_clip_id"]).all()
    assert (cross.groupby("pair_id").size() == 1).all() and pairs["pair_id"].is_unique
    # the reference is the target's first frame and the prompt its caption (paper Sec. 3.3)
    assert (pairs["reference_path"] == pairs["target_path"]).all()
    assert set(cross.loc[cross["target_clip_id"] == "c0", "camera_category"]) == {"complex"}
    assert len(benchmark.benchmark_pairs(clips(), "test", ["cross_view"], max_pairs=3)) == 3
    spread = benchmark.benchmark_pairs(clips(), "test", ["cross_view"], max_pairs=2)
    assert set(spread["group_id"]) == {"mc", "mv"}  # round-robin over groups, not the first group twice
    with pytest.raises(ValueError, match="unknown benchmark kinds"):
        benchmark.benchmark_pairs(clips(), "test", ["novel"])


def test_external_manifest_rows_become_pairs_and_bad_rows_name_the_manifest(tmp_path, write_clip):
    write_clip(tmp_path / "drive.mp4", n=9)
    write_clip(tmp_path / "gt.mp4", n=9, seed=1)
    manifest = tmp_path / "manifest.csv"
    table = pd.DataFrame({"driving": ["drive.mp4", "drive.mp4"], "target": ["gt.mp4", "gt.mp4"],
                          "camera": ["arc_left_30", None], "prompt": [None, "A dancer spins. The camera moves left."]})
    pairs = benchmark.external_pairs(table, manifest)
    assert list(pairs["kind"]) == ["external", "external"] and pairs["pair_id"].is_unique
    assert pairs.loc[0, "prompt"].endswith("The camera arcs 30 degrees to the left around the subject.")
    assert pairs.loc[0, "camera_category"] == "complex" and pairs.loc[1, "prompt"].startswith("A dancer")
    assert pairs.loc[0, "driving_path"] == str(tmp_path / "drive.mp4")
    with pytest.raises(ValueError, match=r"manifest.csv: missing column\(s\) \['target'\]"):
        benchmark.external_pairs(table.drop(columns="target"), manifest)
    with pytest.raises(ValueError, match=r"manifest.csv: row 2: target file .*nope.mp4 does not exist"):
        benchmark.external_pairs(table.assign(target=["gt.mp4", "nope.mp4"]), manifest)
    with pytest.raises(ValueError, match="manifest.csv: row 1: unknown camera motion 'orbit_twice'"):
        benchmark.external_pairs(table.assign(camera=["orbit_twice", None]), manifest)
    assert benchmark.external_pairs(None, manifest).empty


def test_scores_are_perfect_on_the_target_and_worsen_with_noise(tmp_path, write_clip):
    target_path = write_clip(tmp_path / "t.mp4", n=9)
    target = video_io.read_video(target_path)[0]
    pairs = pd.DataFrame([{"pair_id": p, "kind": "cross_view", "target_path": str(target_path)}
                          for p in ("same", "noisy", "noisier")])
    rng = np.random.default_rng(0)

    def noisy(sigma):
        return np.clip(target + rng.normal(0, sigma, target.shape), 0, 255).astype(np.uint8)

    scores = benchmark.score(pairs, {"same": target, "noisy": noisy(10), "noisier": noisy(40)},
                             metrics=("psnr", "ssim"), progress=False).set_index("pair_id")
    assert np.isinf(scores.loc["same", "psnr"]) and scores.loc["same", "ssim"] == pytest.approx(1.0)
    assert scores.loc["noisy", "psnr"] > scores.loc["noisier", "psnr"]
    assert 1.0 > scores.loc["noisy", "ssim"] > scores.loc["noisier", "ssim"]
    with pytest.raises(ValueError, match="no generated video for pairs"):
        benchmark.score(pairs, {"same": target}, metrics=("psnr",), progress=False)
    # a generated video at another size is compared at the target's size, over the common frames
    small = video_io.resize_frames(target[:5], 32, 48)
    row = benchmark.score(pairs.iloc[:1], {"same": small}, metrics=("psnr",), progress=False).iloc[0]
    assert row["frames"] == 5 and np.isfinite(row["psnr"])


def _label(torso_px: np.ndarray, centre_x: np.ndarray, yaw_deg: np.ndarray, W: int = 128, H: int = 128) -> dict:
    from dimo.labelling import label_format as lf

    T = len(torso_px)
    kp = np.zeros((T, 33, 3), np.float32)
    kp[:, [11, 12], 0] = centre_x[:, None]
    kp[:, [11, 12], 1] = H / 2 - torso_px[:, None] / 2
    kp[:, [23, 24], 0] = centre_x[:, None]
    kp[:, [23, 24], 1] = H / 2 + torso_px[:, None] / 2
    a = np.radians(yaw_deg)
    R = np.zeros((T, 3, 3))
    R[:, 0, 0], R[:, 0, 2], R[:, 1, 1], R[:, 2, 0], R[:, 2, 2] = np.cos(a), np.sin(a), 1, -np.sin(a), np.cos(a)
    return {"valid": np.ones(T, bool), "keypoints2d_body": kp, "height": H, "width": W,
            "root_orient": lf.rot6d_from_matrix(R).astype(np.float32)}


def test_camera_signals_read_zoom_shift_and_orbit_and_following_compares_them():
    T = 16
    still = _label(np.full(T, 40.0), np.full(T, 64.0), np.zeros(T))
    zoom = _label(np.linspace(40, 60, T), np.full(T, 64.0), np.zeros(T))
    truck = _label(np.full(T, 40.0), np.linspace(64, 40, T), np.zeros(T))
    arc = _label(np.full(T, 40.0), np.full(T, 64.0), np.linspace(0, 30, T))
    s = {name: benchmark.camera_signals(lab) for name, lab in
         {"still": still, "zoom": zoom, "truck": truck, "arc": arc}.items()}
    assert s["still"] == pytest.approx({"zoom": 0, "shift_x": 0, "shift_y": 0, "orbit_deg": 0}, abs=1e-9)
    assert 0.25 < s["zoom"]["zoom"] < np.log(60 / 40)  # medians of the first and last quarters
    assert s["truck"]["shift_x"] < -0.1 and abs(s["truck"]["zoom"]) < 1e-9
    assert s["arc"]["orbit_deg"] == pytest.approx(30, abs=1e-6)
    assert benchmark.follows(s["zoom"], s["zoom"]) and benchmark.follows(s["still"], s["still"])
    assert not benchmark.follows(s["still"], s["zoom"])  # the target zooms, the generated video does not
    assert not benchmark.follows(s["zoom"], s["still"])  # the target is static, the generated video zooms
    assert not benchmark.follows(s["truck"], s["arc"])
    backwards = {**s["arc"], "orbit_deg": -30.0}
    assert not benchmark.follows(backwards, s["arc"])  # the right motion in the wrong direction
    few = _label(np.full(3, 40.0), np.full(3, 64.0), np.zeros(3))
    assert benchmark.camera_signals(few) is None


def test_scores_read_targets_from_the_clip_partitions_by_clip_id(tmp_path, write_clip):
    target = np.random.default_rng(1).integers(0, 256, (9, 48, 64, 3), dtype=np.uint8)
    stale = write_clip(tmp_path / "stale.mp4", n=9, seed=3)  # what the table's path holds: must not be read
    user = write_clip(tmp_path / "user.mp4", n=9, seed=4)    # an external-manifest target, outside the catalog
    pairs = pd.DataFrame([
        {"pair_id": "syn", "kind": "cross_view", "target_clip_id": "c-syn", "target_path": str(stale)},
        {"pair_id": "ing", "kind": "reconstruction", "target_clip_id": "c-ing", "target_path": str(stale)},
        {"pair_id": "ext", "kind": "external", "target_clip_id": "c-syn", "target_path": str(user)}])
    synthetic = {"c-syn": lambda: Video(target, 16.0), "c-old": lambda: Video(target[:, ::-1], 16.0)}
    ingested = {"c-ing": lambda: Video(target[::-1].copy(), 16.0)}
    clips = clip_table.clip_loaders(synthetic, None, ingested)
    assert set(clips) == {"c-syn", "c-old", "c-ing"} and clip_table.clip_loaders(None, {}) == {}
    generated = {"syn": target, "ing": target[::-1].copy(), "ext": video_io.read_video(user)[0]}
    scores = benchmark.score(pairs, generated, metrics=("psnr",), progress=False, clips=clips).set_index("pair_id")
    assert np.isinf(scores["psnr"]).all()  # each generated video equals the target it was looked up as
    by_path = benchmark.score(pairs, generated, metrics=("psnr",), progress=False).set_index("pair_id")
    assert np.isfinite(by_path.loc["syn", "psnr"]) and np.isinf(by_path.loc["ext", "psnr"])  # without clips: paths
    with pytest.raises(clip_table.MissingClipError, match="'c-ing' has no file in the clip partitions"):
        benchmark.score(pairs, generated, metrics=("psnr",), progress=False, clips=synthetic)
    assert benchmark.set_metrics(pairs.iloc[:2], generated, clips=clips)["fid"].reason  # no weights: a reason


def _gt_and_labels(T: int = 16):
    """Ground truth (camera-space COCO keypoints) and full labels: a target whose camera zooms in, a generated video
    labelled exactly like it with the ground-truth pose, and one whose camera zooms out with a known pose error."""
    from dimo.labelling import label_format as lf

    rng = np.random.default_rng(0)
    keypoints = rng.normal(0, 0.3, (T, len(lf.FIT_KEYPOINTS), 3)) + [0, 0, 3.0]
    off = keypoints.copy()
    moved = [j for j in range(17) if j not in (11, 12)]  # every COCO joint but the hips: the hip centre stays
    off[:, moved, 0] += 0.05

    def label(torso, fit):
        part = _label(torso, np.full(T, 64.0), np.zeros(T))
        return lf.make_label(T, "anny", height=128, width=128, valid=np.ones(T, bool),
                             person_detected=np.ones(T, bool), keypoints2d_body=part["keypoints2d_body"],
                             root_orient=part["root_orient"], fit_keypoints3d=fit)

    zoom_in, zoom_out = np.linspace(40, 60, T), np.linspace(60, 40, T)
    return keypoints, {"target": label(zoom_in, keypoints), "same": label(zoom_in, keypoints),
                       "backwards": label(zoom_out, off)}, 50.0 * len(moved) / 17


def test_pose_accuracy_and_camera_following_have_known_answers(tmp_path):
    """The labeller's outputs for the generated videos are seeded in the label store (the labeller itself is
    tested in test_pseudo_label): MPJPE is 0 for the ground-truth pose and exactly the joint offset otherwise;
    camera following is 1 for the target's motion and 0 for the same motion in the wrong direction."""
    from kedro.config import OmegaConfigLoader

    from dimo.labelling import label_format as lf
    from dimo.labelling import labeller
    from tests.conftest import PROJECT_ROOT

    params = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="local")[
        "parameters"]["pseudo_label"]
    keypoints, labels, offset_mm = _gt_and_labels()
    np.savez(tmp_path / "gt.npz", keypoints_cam=keypoints)
    lf.save_label(tmp_path / "target_label.npz", labels["target"])
    store = labeller.LabelStore(tmp_path / "store")
    rng = np.random.default_rng(2)
    target = rng.integers(0, 256, (16, 48, 48, 3), dtype=np.uint8)
    generated = {"same": target, "backwards": rng.integers(0, 256, target.shape, dtype=np.uint8)}
    for pid, frames in generated.items():
        store.save(labeller.content_hash(params, frames=frames), labels[pid])
    pairs = pd.DataFrame([{"pair_id": pid, "kind": "cross_view", "target_clip_id": "t", "target_path": "unused.mp4",
                           "target_gt_path": str(tmp_path / "gt.npz"),
                           "target_label_path": str(tmp_path / "target_label.npz")} for pid in generated])
    scores = benchmark.score(pairs, generated, metrics=("psnr",), label_params=params, label_store=store,
                             progress=False, clips={"t": lambda: Video(target, 16.0)}).set_index("pair_id")
    assert scores.loc["same", "camera_following"] == 1.0 and scores.loc["backwards", "camera_following"] == 0.0
    assert scores.loc["same", "mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    assert scores.loc["same", "pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    assert scores.loc["backwards", "mpjpe_mm"] == pytest.approx(offset_mm, rel=1e-4)  # 15 of 17 joints, 5 cm
    assert scores.loc["backwards", "pa_mpjpe_mm"] < scores.loc["backwards", "mpjpe_mm"]  # alignment removes some
    assert (scores["detection_rate"] == 1.0).all() and np.isinf(scores.loc["same", "psnr"])
    assert scores.loc["same", "camera_zoom_error"] == pytest.approx(0.0, abs=1e-9)
    assert scores.loc["backwards", "camera_zoom_error"] > 0.5  # log(1.5) each way


def test_a_registered_metric_appears_in_scores_and_tables():
    """Adding a metric = a function + one registry line: scores, the summary, the markdown arrows, the set-level
    results and the sweep's direction check all pick it up."""
    target = np.random.default_rng(3).integers(0, 200, (5, 24, 24, 3), dtype=np.uint8)
    pairs = pd.DataFrame([{"pair_id": p, "kind": "cross_view", "camera_category": "static", "target_clip_id": "t",
                           "target_path": "unused.mp4"} for p in ("same", "brighter")])
    generated = {"same": target, "brighter": target + 10}
    clips = {"t": lambda: Video(target, 16.0)}

    def mean_abs_error(gen, tgt, weights):
        return float(np.abs(gen.astype(float) - tgt.astype(float)).mean())

    def frames_per_set(gens, tgts, weights):
        return float(sum(len(g) for g in gens))

    with registry.registered(registry.Metric("mae", "pair", False, mean_abs_error, "MAE", ".2f")), \
            registry.registered(registry.Metric("set_frames", "set", True, frames_per_set)):
        scores = benchmark.score(pairs, generated, metrics=("psnr", "mae"), progress=False, clips=clips)
        assert list(scores.set_index("pair_id")["mae"]) == [0.0, 10.0]
        assert "mae" in benchmark.PER_PAIR_METRICS and benchmark.HIGHER_IS_BETTER["mae"] is False
        set_level = benchmark.set_metrics(pairs, generated, clips=clips)
        assert set_level["set_frames"] == 10.0 and set(set_level) == {"fid", "fvd", "set_frames"}
        table = benchmark.summarise(scores, {"cross_view": set_level})
        # columns in registration order: the new metrics come after the built-in ones
        assert list(table.columns) == ["benchmark", "pairs", "psnr", "fid", "fvd", "mae", "set_frames"]
        assert table.set_index("benchmark").loc["cross_view", "mae"] == 5.0
        md = benchmark.markdown(table, "t")
        header = next(line for line in md.splitlines() if line.startswith("| benchmark"))
        assert [c.strip() for c in header.strip("|").split("|")] == [
            "benchmark", "pairs", "psnr ↑", "fid ↓", "fvd ↓", "mae ↓", "set_frames ↑"]
    assert "mae" not in registry.METRICS and "mae" not in benchmark.PER_PAIR_METRICS  # removed after the block
    with pytest.raises(ValueError, match=r"unknown per-pair metrics \['mae'\]"):
        benchmark.score(pairs, generated, metrics=("mae",), progress=False, clips=clips)


def test_summary_splits_cross_view_by_camera_and_keeps_set_level_reasons():
    from dimo.evaluation.common import MetricUnavailable

    scores = pd.DataFrame({"kind": ["reconstruction", "cross_view", "cross_view"],
                           "camera_category": ["static", "static", "complex"], "psnr": [20.0, 14.0, 10.0],
                           "ssim": [0.8, 0.6, 0.4]})
    table = benchmark.summarise(scores, {"cross_view": {"fid": MetricUnavailable("fid", "no weights"),
                                                        "fvd": 123.0}}).set_index("benchmark")
    assert table.loc["cross_view", "psnr"] == 12.0 and table.loc["cross_view / static camera", "psnr"] == 14.0
    assert table.loc["cross_view / moving camera", "pairs"] == 1
    assert np.isnan(table.loc["cross_view", "fid"]) and table.loc["cross_view", "fvd"] == 123.0
    assert list(table.reset_index().columns) == ["benchmark", "pairs", "psnr", "ssim", "fid", "fvd"]  # registry order
    md = benchmark.markdown(table.reset_index(), "t", ["note"])
    assert "psnr ↑" in md and "fid ↓" in md and "- note" in md
    header = next(line for line in md.splitlines() if line.startswith("| benchmark"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["benchmark", "pairs", "psnr ↑", "ssim ↑", "fid ↓",
                                                                  "fvd ↓"]


@pytest.fixture
def registry_store(tmp_path, monkeypatch):
    """An empty MLflow registry on a temp sqlite store."""
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(previous)


GATE = {"alias": "champion", "metric": "lpips_alex", "benchmark": "cross_view", "candidate_stage": "stage3"}


def _gate(client, name: str, stage: str, score: float, metric: str = "lpips_alex", pairs=None) -> tuple[str, dict]:
    """A new registered version of `name` trained by `stage`, scored `score` on the cross-view row, gated."""
    from dimo.pipelines.evaluate.nodes import gate_champion

    version = client.create_model_version(name, f"models-{stage}", tags={"stage": stage}).version
    table = pd.DataFrame([{"benchmark": "reconstruction", "pairs": 6, "psnr": 30.0, "lpips_alex": 0.01},
                          {"benchmark": "cross_view", "pairs": 8, "psnr": 20.0, "lpips_alex": 0.5, metric: score}])
    params = {"champion": {**GATE, "metric": metric}, "sampling": {"num_steps": 2, "seed": 0}}
    pairs = benchmark.benchmark_pairs(clips(), "test") if pairs is None else pairs
    result, metrics = gate_champion(table, pairs, {"model": f"models:/{name}@{stage}",
                                                   "model_version": f"models:/{name}/{version}"}, params)
    assert json.loads(json.dumps(result)) == result  # the catalog writes it as JSON
    assert metrics["promoted"]["value"] == float(result["promoted"])
    return version, result


def test_champion_moves_only_to_a_stage3_model_that_scores_at_least_as_well(registry_store):
    client = registry_store
    client.create_registered_model("dimo")

    def champion() -> str:
        return client.get_model_version_by_alias("dimo", "champion").version

    first, result = _gate(client, "dimo", "stage3", 0.5)
    assert result["promoted"] and result["reason"] == "the first champion" and champion() == first
    assert result["champion_before"] is None and result["champion_after"] == f"models:/dimo/{first}"
    tags = client.get_model_version("dimo", first).tags
    assert tags["evaluate.lpips_alex"] == "0.5" and tags["evaluate.benchmark"] == result["benchmark"]

    with mlflow.start_run() as run:  # LPIPS: lower is better (the metric registry says so)
        worse, result = _gate(client, "dimo", "stage3", 0.6)
    assert not result["promoted"] and champion() == first and result["champion_score"] == 0.5
    assert result["reason"] == f"lpips_alex 0.6 is not <= 0.5 of models:/dimo/{first}"
    run_tags = client.get_run(run.info.run_id).data.tags
    assert run_tags["champion_gate.decision"] == "kept"
    assert run_tags["champion_gate.champion"] == f"models:/dimo/{first}"
    assert client.get_model_version("dimo", worse).tags["evaluate.lpips_alex"] == "0.6"  # scored all the same

    better, result = _gate(client, "dimo", "stage3", 0.4)
    assert result["promoted"] and champion() == better and result["champion_before"] == f"models:/dimo/{first}"
    tied, result = _gate(client, "dimo", "stage3", 0.4)
    assert result["promoted"] and champion() == tied  # at least as well
    _, result = _gate(client, "dimo", "stage2", 0.1)
    assert not result["promoted"] and champion() == tied and result["reason"].startswith("not a candidate: a stage2")
    _, result = _gate(client, "dimo", "stage3", 0.01, pairs=benchmark.benchmark_pairs(clips(), "test").iloc[:3])
    assert not result["promoted"] and champion() == tied  # scored on another benchmark: not comparable
    assert f"the champion (models:/dimo/{tied}) has no lpips_alex score on this benchmark" in result["reason"]

    client.create_registered_model("other")  # PSNR: higher is better
    assert _gate(client, "other", "stage3", 20.0, "psnr")[1]["promoted"]
    assert not _gate(client, "other", "stage3", 19.0, "psnr")[1]["promoted"]
    assert _gate(client, "other", "stage3", 21.0, "psnr")[1]["promoted"]


def test_a_champion_gate_on_a_metric_that_is_not_scored_fails_before_generation():
    from dimo.pipelines.evaluate.nodes import select_benchmark

    params = {"split": "test", "kinds": ["reconstruction", "cross_view"], "max_pairs": None,
              "external_manifest": "none.csv", "metrics": ["psnr", "ssim"], "pose": False, "champion": GATE}
    with pytest.raises(ValueError, match=r"evaluate.champion.metric 'lpips_alex' is not scored: add it to "
                                         r"evaluate.metrics"):
        select_benchmark(clips(), None, params)
    with pytest.raises(ValueError, match="evaluate.champion.benchmark 'novel' is not a row"):
        select_benchmark(clips(), None, {**params, "champion": {**GATE, "metric": "psnr", "benchmark": "novel"}})
    assert len(select_benchmark(clips(), None, {**params, "champion": {**GATE, "metric": "psnr"}}))


def test_evaluate_in_the_default_chain_scores_the_champion_and_logs_tables(smoke_chain):
    report = smoke_chain / "data" / "08_reporting" / "evaluate"
    pairs = pd.read_parquet(smoke_chain / "data" / "07_model_output" / "evaluate" / "benchmark_pairs.parquet")
    scores = pd.read_csv(report / "scores_per_pair.csv")
    assert set(pairs["kind"]) == {"reconstruction", "cross_view"} and len(scores) == len(pairs)
    assert scores["psnr"].between(5, 60).all() and scores["ssim"].between(-1, 1).all()
    assert "detection_rate" in scores and scores["detection_rate"].between(0, 1).all()
    videos = sorted((smoke_chain / "data" / "07_model_output" / "evaluate" / "videos").glob("*.mp4"))
    assert [v.stem for v in videos] == sorted(pairs["pair_id"])
    frames, fps = video_io.read_video(videos[0])
    target = video_io.read_video(smoke_chain / pairs.set_index("pair_id").loc[videos[0].stem, "target_path"])[0]
    assert frames.shape == target.shape and fps == 16
    sbs = video_io.read_video(report / "side_by_side" / videos[0].name)[0]
    assert sbs.shape[2] == 4 * target.shape[2]  # reference | driving | generated | target
    # the stored videos are lossless: re-scoring them against the target clips gives the pipeline's numbers
    for row in scores.itertuples():
        gen = video_io.read_video(smoke_chain / "data" / "07_model_output" / "evaluate" / "videos" /
                                  f"{row.pair_id}.mp4")[0]
        tgt = video_io.read_video(smoke_chain / row.target_path)[0]
        assert M.psnr(*benchmark.align(gen, tgt)) == pytest.approx(row.psnr, rel=1e-9)
        assert M.ssim(*benchmark.align(gen, tgt)) == pytest.approx(row.ssim, rel=1e-9)
    assert scores["camera_following"].dropna().isin([0.0, 1.0]).all()
    table = pd.read_csv(report / "benchmark_table.csv")
    assert {"reconstruction", "cross_view", "codec reconstruction (VAE only)"} <= set(table["benchmark"])
    metric_columns = list(table.columns[2:])
    assert list(table.columns[:2]) == ["benchmark", "pairs"]
    assert metric_columns == [m for m in registry.names() if m in metric_columns]  # registry order, registry names
    assert {"psnr", "ssim", "lpips_alex", "lpips_vgg", "fid", "fvd", "detection_rate"} <= set(metric_columns)
    md = (report / "benchmark_table.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| benchmark"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == [
        f"{m} {registry.get(m).arrow}" for m in metric_columns]
    assert "models:/dimo@champion" in md and "unavailable: fid" in md  # no Inception weights in the copy
    generation = json.loads((smoke_chain / "data" / "07_model_output" / "evaluate" / "generation.json").read_text())
    assert generation["frames"] == sum(len(video_io.read_video(v)[0]) for v in videos)
    mlflow.set_tracking_uri(f"sqlite:///{smoke_chain / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = [r for r in mlflow.search_runs(experiment_names=["dimo"], output_format="list")
            if "evaluate.reconstruction.psnr" in r.data.metrics]
    assert runs, "no MLflow run logged the benchmark metrics"
    run = runs[0]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/benchmark_table.md", "evaluate/benchmark_table.csv", "evaluate/scores_per_pair.csv",
            "evaluate/side_by_side_montage.mp4", "evaluate/champion_gate.json"} <= names
    # the candidate scored is the stage-3 model; with no champion before it, the gate made it the first champion
    assert "model models:/dimo@stage3 (models:/dimo/" in md
    gate = json.loads((report / "champion_gate.json").read_text())
    champion = client.get_model_version_by_alias("dimo", "champion")
    assert gate["promoted"] and gate["reason"] == "the first champion" and gate["champion_before"] is None
    assert gate["candidate"] == generation["model_version"] == f"models:/dimo/{champion.version}"
    assert champion.tags["stage"] == "stage3"
    cross_view = table.set_index("benchmark").loc["cross_view", "lpips_alex"]
    assert float(champion.tags["evaluate.lpips_alex"]) == gate["candidate_score"] == pytest.approx(cross_view)
    assert run.data.metrics["evaluate.champion_gate.promoted"] == 1.0
    assert run.data.tags["champion_gate.decision"] == "promoted"
