"""Motion-control metrics on inputs whose answers are known (dimo.evaluation.motion_control, pose_probe)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dimo.evaluation import motion_control as mc
from dimo.evaluation import pose_probe as pp
from dimo.models import DimoModel, configs


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_covers_the_true_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (40, 640):
        ci = mc.bootstrap_ci(rng.normal(2.0, 1.0, n), n_boot=2000, seed=0)
        assert ci["n"] == n
        assert ci["ci_low"] < 2.0 < ci["ci_high"]
        assert ci["ci_low"] < ci["mean"] < ci["ci_high"]
        widths.append(ci["ci_high"] - ci["ci_low"])
    # the width of a mean's CI goes as 1/sqrt(n): 16x the data, about a quarter of the width
    assert widths[1] < 0.4 * widths[0]


def test_bootstrap_ci_is_deterministic_and_drops_nans():
    x = np.r_[np.random.default_rng(0).normal(0, 1, 50), np.nan]
    assert mc.bootstrap_ci(x, seed=3) == mc.bootstrap_ci(x, seed=3)
    assert mc.bootstrap_ci(x)["n"] == 50
    assert mc.bootstrap_ci([])["n"] == 0 and np.isnan(mc.bootstrap_ci([])["mean"])
    one = mc.bootstrap_ci([1.5])
    assert one["ci_low"] == one["ci_high"] == one["mean"] == 1.5


def test_paired_difference_ci_sees_a_small_shift_under_a_large_spread():
    rng = np.random.default_rng(2)
    b = rng.normal(0, 10, 60)  # item-to-item spread much larger than the effect
    a = b + 0.5 + rng.normal(0, 0.1, 60)
    ci = mc.paired_difference_ci(a, b)
    assert 0 < ci["ci_low"] < 0.5 < ci["ci_high"]
    unpaired = mc.bootstrap_ci(a)["ci_low"] - mc.bootstrap_ci(b)["ci_high"]
    assert unpaired < 0  # unpaired intervals overlap: the pairing is what shows it
    with pytest.raises(ValueError, match="same length"):
        mc.paired_difference_ci(a, b[:-1])


# ---------------------------------------------------------------------------------------------- retrieval
def test_retrieval_is_perfect_for_identical_tokens():
    tokens = np.random.default_rng(0).normal(size=(17, 160))
    r = mc.cross_view_retrieval(tokens, tokens)
    assert r["top1"].tolist() == [1.0] * 17 and r["top5"].tolist() == [1.0] * 17
    assert np.allclose(r["distance_ratio"], 0.0)


def test_retrieval_is_at_chance_for_random_tokens():
    rng = np.random.default_rng(0)
    T = 200
    top1, top5, ratio = [], [], []
    for _ in range(5):
        r = mc.cross_view_retrieval(rng.normal(size=(T, 64)), rng.normal(size=(T, 64)))
        top1.append(r["top1"].mean())
        top5.append(r["top5"].mean())
        ratio.append(r["distance_ratio"].mean())
    chance = mc.retrieval_chance(T)
    assert chance == {"top1": 1 / T, "top5": 5 / T}
    assert np.mean(top1) < 3 * chance["top1"] + 0.01
    assert abs(np.mean(top5) - chance["top5"]) < 0.02
    assert abs(np.mean(ratio) - 1.0) < 0.02


def test_retrieval_ties_are_misses_and_shapes_are_checked():
    same = np.zeros((6, 4))  # every frame at the same place: nothing is retrieved
    r = mc.cross_view_retrieval(same, same)
    assert r["top1"].sum() == 0 and r["top5"].sum() == 0
    with pytest.raises(ValueError, match="tokens"):
        mc.cross_view_retrieval(same, same[:5])
    assert mc.retrieval_chance(3)["top5"] == 1.0


# ---------------------------------------------------------------------------------------------- pose following
def _skeleton(T=8, J=5, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.zeros((T, J, 2))
    gt[..., 0] = rng.uniform(40, 60, (T, J))
    gt[..., 1] = np.linspace(20, 120, J)[None] + rng.uniform(-1, 1, (T, J))  # ~100 px tall
    return gt


def test_person_height_is_the_larger_side_of_the_visible_joints_box():
    gt = np.array([[[10, 10], [30, 110], [500, 500]]], float)
    vis = np.array([[True, True, False]])
    assert mc.person_height_px(gt, vis).tolist() == [100.0]
    lying = gt[:, :, ::-1]  # the same body on its side
    assert mc.person_height_px(lying, vis).tolist() == [100.0]
    assert np.isnan(mc.person_height_px(gt, np.array([[True, False, False]]))[0])


def test_pose_following_known_offsets():
    gt = _skeleton()
    vis = np.ones(gt.shape[:2], bool)
    h = mc.person_height_px(gt, vis)
    exact = mc.pose_following(gt, gt, vis, h)
    assert np.allclose(exact["pck"], 1.0) and np.allclose(exact["err_px"], 0.0)
    shifted = gt + np.array([3.0, 4.0])  # 5 px off, far within 0.1 x ~100 px
    r = mc.pose_following(shifted, gt, vis, h)
    assert np.allclose(r["err_px"], 5.0) and np.allclose(r["pck"], 1.0)
    far = gt + np.array([0.0, 30.0])
    assert np.allclose(mc.pose_following(far, gt, vis, h)["pck"], 0.0)
    # half the joints off: PCK 0.6 with 3 of 5 right; an invisible wrong joint does not count
    half = gt.copy()
    half[:, :2] += 50
    assert np.allclose(mc.pose_following(half, gt, vis, h)["pck"], 0.6)
    vis2 = vis.copy()
    vis2[:, :2] = False
    assert np.allclose(mc.pose_following(half, gt, vis2, h)["pck"], 1.0)
    none = mc.pose_following(gt, gt, np.zeros_like(vis), h)
    assert np.isnan(none["pck"]).all()
    # the copy-driving-pose reference is pose following with the driving view's joints as prediction
    ref = mc.copy_driving_pose(shifted, gt, vis, h)
    assert np.allclose(ref["err_px"], 5.0)
    # the still-reference reference holds frame 0: exact on frame 0, 30 px off on a frame that moved 30 px
    moving = np.concatenate([gt[:1], gt[:1] + np.array([0.0, 30.0])])
    vis_m, h_m = np.ones(moving.shape[:2], bool), mc.person_height_px(moving, np.ones(moving.shape[:2], bool))
    still = mc.hold_first_frame_pose(moving, vis_m, h_m)
    assert np.allclose(still["pck"], [1.0, 0.0]) and np.allclose(still["err_px"], [0.0, 30.0])


# ---------------------------------------------------------------------------------------------- mismatched pairs
def test_mismatched_pairs_swap_to_another_motion():
    pairs = pd.DataFrame({"driving_clip_id": [f"c{i}" for i in range(6)],
                          "target_clip_id": [f"t{i}" for i in range(6)],
                          "group_id": ["g0", "g0", "g1", "g1", "g2", "g2"]})
    out = mc.mismatched_pairs(pairs, seed=0)
    group = dict(zip(pairs.driving_clip_id, pairs.group_id))
    assert (out.target_clip_id == pairs.target_clip_id).all()
    assert (out.true_driving_clip_id == pairs.driving_clip_id).all()
    assert all(group[a] != group[b] for a, b in zip(out.driving_clip_id, out.true_driving_clip_id))
    assert out.equals(mc.mismatched_pairs(pairs, seed=0))
    motion = {"c0": "walk", "c1": "walk", "c2": "walk", "c3": "walk", "c4": "walk", "c5": "run"}
    by_motion = mc.mismatched_pairs(pairs, seed=1, clip_motion=motion)
    assert by_motion.driving_clip_id.iloc[:5].eq("c5").all() and by_motion.driving_clip_id.iloc[5] != "c5"
    with pytest.raises(ValueError, match="two different motions"):
        mc.mismatched_pairs(pairs.assign(group_id="g"), seed=0)
    # held-out pairs of one motion: the mismatched drivers come from the pool of other clips
    pooled = mc.mismatched_pairs(pairs.assign(group_id="g"), seed=0, pool={"p0": "jump", "p1": "g", "p2": "jump"})
    assert set(pooled.driving_clip_id) <= {"p0", "p2"}


def test_mismatched_pairs_keep_the_person_when_they_can():
    pairs = pd.DataFrame({"driving_clip_id": ["a_walk", "b_walk"], "target_clip_id": ["a_walk", "b_walk"],
                          "motion_name": ["walk", "walk"]})
    pool = {"a_run": "run", "a_jump": "jump", "b_run": "run", "c_run": "run"}
    person = {"a_walk": "a", "b_walk": "b", "a_run": "a", "a_jump": "a", "b_run": "b", "c_run": "c"}
    for seed in range(10):
        out = mc.mismatched_pairs(pairs, seed, pool=pool, clip_identity=person)
        assert out.driving_clip_id.iloc[0] in {"a_run", "a_jump"} and out.driving_clip_id.iloc[1] == "b_run"
    # nobody else moves differently as this person: any other motion will do
    alone = mc.mismatched_pairs(pairs.iloc[:1], 0, pool={"c_run": "run"}, clip_identity=person)
    assert alone.driving_clip_id.iloc[0] == "c_run"
    # without identities the draw is the one it always was
    assert mc.mismatched_pairs(pairs, 3, pool=pool).equals(mc.mismatched_pairs(pairs, 3, pool=pool, clip_identity=None))


# ---------------------------------------------------------------------------------------------- motion dependence
SIZE, FRAMES = 64, 5  # 2 latent frames


def _pair(sign: float, pattern: torch.Tensor, cfg) -> dict:
    """A pair whose target is +pattern or -pattern, told apart only by the driving clip (+ or - frames)."""
    g = torch.Generator().manual_seed(7)  # the same reference and prompt for both pairs
    frames = torch.rand(FRAMES, 3, SIZE, SIZE, generator=g) * 0.2 + sign * 0.7
    return {"target_latents": sign * pattern, "reference_latents": torch.randn(16, 1, 8, 8, generator=g),
            "text_embeddings": torch.randn(4, cfg.text_in_dim, generator=g), "text_mask": torch.ones(4, dtype=bool),
            "driving_frames": frames}


@pytest.fixture(scope="module")
def overfit_two_motions():
    """A tiny model trained for a few dozen steps on two pairs that differ only in motion and target."""
    cfg = configs.get("tiny", p_drop_motion=0.0, p_drop_text=0.0, augment={"enabled": False})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DimoModel(cfg)
    pattern = torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    pairs = [_pair(1.0, pattern, cfg), _pair(-1.0, pattern, cfg)]
    batch = {k: torch.stack([p[k] for p in pairs]) for k in pairs[0]}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(40):
        loss = model.training_losses(batch, step, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, pairs


def test_motion_gap_is_positive_for_a_model_that_uses_motion(overfit_two_motions):
    model, (a, b) = overfit_two_motions
    gaps = mc.motion_dependence_gaps(model, [a, b], [b, a], seed=0)
    assert gaps.shape == (2,)
    assert (gaps > 0.02).all(), gaps  # measured ~0.06 after 40 steps; a silent model gives < 1e-6
    assert np.array_equal(gaps, mc.motion_dependence_gaps(model, [a, b], [b, a], seed=0))  # seeded draws


def test_motion_gap_is_zero_when_motion_attention_outputs_nothing(overfit_two_motions):
    model, (a, b) = overfit_two_motions
    silent = DimoModel(model.config)
    silent.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block in silent.generator.blocks:
            block.attn_motion.to_out[0].weight.zero_()
            block.attn_motion.to_out[0].bias.zero_()
    gaps = mc.motion_dependence_gaps(silent, [a, b], [b, a], seed=0)
    assert np.abs(gaps).max() < 1e-6, gaps
    # the true driving clip against itself is 0 for any model
    assert np.abs(mc.motion_dependence_gaps(model, [a], [a], seed=0)).max() < 1e-6


def test_frame_motion_tokens_flatten_the_body_tokens(overfit_two_motions):
    model, (a, _) = overfit_two_motions
    tokens = mc.frame_motion_tokens(model, a["driving_frames"])
    body = model.config.body_encoder
    assert tokens.shape == (FRAMES, body["num_latent_tokens"] * body["token_dim"])
    as_uint8 = ((a["driving_frames"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert np.allclose(mc.frame_motion_tokens(model, as_uint8), tokens, atol=0.05)
    r = mc.cross_view_retrieval(tokens, tokens)
    assert r["top1"].mean() == 1.0


# ---------------------------------------------------------------------------------------------- pose probe
COLOURS = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255], [255, 255, 40]], np.uint8)


def _discs(n: int, size: int = 48, seed: int = 0):
    """Renders with known joints: a disc of a distinct colour at each joint on a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    joints = rng.uniform(6, size - 6, (n, len(COLOURS), 2)).astype(np.float32)
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        f = (rng.integers(60, 120, (size, size, 1)) + np.zeros(3, int)).astype(np.uint8)
        for j, (x, y) in enumerate(joints[i]):
            f[(xx - x) ** 2 + (yy - y) ** 2 <= 9] = COLOURS[j]
        frames[i] = f
    return frames, joints


@pytest.fixture
def one_thread():
    """Small convs on a busy 2-core machine run ~10x faster on one thread than on two that wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pose_probe_reads_the_renders_it_was_fitted_on(tmp_path, one_thread):
    frames, joints = _discs(384)
    visible = pp.in_frame(joints, 48, 48)
    probe = pp.fit_pose_probe(frames, joints, visible, {"input_size": 48, "epochs": 30, "batch_size": 32,
                                                        "augment": False}, seed=0)
    acc = pp.probe_accuracy(probe, frames, joints, visible, heights=np.full(len(frames), 48.0))
    assert acc["frames"] == 384
    assert acc["pck_mean"] > 0.95 and acc["err_px_median"] < 1.5, acc
    probe.save_pretrained(tmp_path / "probe")
    again = pp.PoseProbe.from_pretrained(tmp_path / "probe")
    assert np.allclose(again.predict(frames[:8]), probe.predict(frames[:8]), atol=1e-5)


def test_pose_probe_augmentation_moves_the_joints_with_the_pixels():
    """A dot drawn at each joint (one channel per joint) lands where the augmented joint says, after a random
    scale, rotation, shift and flip; a flip hands each joint its mirror partner's label."""
    size, n = 64, 16
    uv = torch.rand(n, 2, 2, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    x = -torch.ones(n, 3, size, size)
    for i in range(n):
        for j in range(2):
            cx, cy = (uv[i, j] * size).long()
            x[i, j, cy - 1: cy + 2, cx - 1: cx + 2] = 1.0
    params = {**pp.FIT_DEFAULTS, "flip_pairs": ((0, 1),), "flip_prob": 0.5, "shift_px": 8}
    y, uv_out, vis = pp._geometric(x, uv, torch.ones(n, 2), params, torch.Generator().manual_seed(1))
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    swapped = 0
    for i in range(n):
        mass = (y[i, :2] + 1).clamp(min=0)
        centres = torch.stack([(mass * xx).sum((1, 2)), (mass * yy).sum((1, 2))], -1) / mass.sum((1, 2))[:, None]
        dist = (centres[None] - uv_out[i, :, None] * size).norm(dim=-1)   # (joint, channel)
        seen = vis[i] > 0
        straight, crossed = dist.diagonal(), dist.flip(1).diagonal()
        assert bool(((straight < 1.5) | (crossed < 1.5))[seen].all()), (i, dist)
        swapped += int(bool((crossed < 1.5)[seen].all() and seen.any() and not (straight < 1.5)[seen].all()))
    assert 0 < swapped < n  # some frames were mirrored, not all
