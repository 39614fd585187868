"""Tests for dimo.models (issue 5). Toy scale only; real-scale sizes are checked on the meta device."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import WanTransformer3DModel

from dimo.models import (
    AnnealSchedule,
    AugmentConfig,
    DimoModel,
    DimoWanTransformer,
    DimoWanTransformerBlock,
    DrivingAugment,
    FlowMatching,
    FrozenTextEncoder,
    GeometricDecoder,
    LatentCodec,
    MotionEncoder,
    TextProjection,
    configs,
    crop_hands,
    hand_boxes,
    masked_pose_loss,
    pad_text_embeddings,
    shift_timesteps,
    stock_param_count,
)
from dimo.models.generator import _STOCK_KEYS

T, S, F = 17, 64, 5  # driving frames, pixels, latent frames


@pytest.fixture(autouse=True)
def _determinism():
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # tiny models drift into denormals when overfitting: 3x slower on CPU
    yield
    torch.set_flush_denormal(False)  # torch's default (there is no getter)


def make_batch(cfg, B=1, size=S, seed=0, hands=True):
    g = torch.Generator().manual_seed(seed)
    kp = None
    if hands:
        kp = torch.rand(B, T, 2, 21, 3, generator=g)
        kp[..., :2] = kp[..., :2] * size * 0.3 + size * 0.35
        kp[..., 2] = 0.9
    h = size // 8
    return {
        "target_latents": torch.randn(B, 16, F, h, h, generator=g),
        "reference_latents": torch.randn(B, 16, 1, h, h, generator=g),
        "text_embeddings": torch.randn(B, 8, cfg.text_in_dim, generator=g),
        "text_mask": torch.ones(B, 8, dtype=torch.bool),
        "driving_frames": torch.rand(B, T, 3, size, size, generator=g) * 2 - 1,
        "hand_keypoints": kp,
        "pose_targets": torch.randn(B, T, 306, generator=g),
        "pose_valid": torch.ones(B, T),
    }


def stock_tiny_config(**kw):
    gen = configs.get("tiny").generator
    cfg = {k: v for k, v in gen.items() if k in _STOCK_KEYS}
    cfg["in_channels"] = 16
    cfg.update(kw)
    return cfg


def motion_args(gen_cfg, **kw):
    keys = ("motion_token_dim", "num_motion_tokens")
    return {**{k: gen_cfg[k] for k in keys}, **kw}


# ---------------------------------------------------------------- configs / small parts
def test_config_registry_and_variants():
    assert {"tiny", "small", "mid", "wan2.1-t2v-1.3b", "wan2.1-i2v-14b"} <= set(configs.names())
    for name in configs.names():
        for v in configs.VARIANTS:
            cfg = configs.get(name, variant=v)
            assert cfg.generator["num_motion_tokens"] == cfg.num_motion_tokens
    assert configs.get("tiny", variant="no_hand").hand_encoder is None
    assert configs.get("tiny", variant="no_geo").geometric_decoder is None
    assert configs.get("tiny", variant="smpl_control").pose_tokenizer["pose_dim"] == 21 * 6
    assert configs.get("tiny", flow={"shift": 7.0}).flow["shift"] == 7.0
    with pytest.raises(KeyError):
        configs.get("nope")
    with pytest.raises(ValueError):
        configs.get("tiny", variant="nope")


def test_anneal_schedule_ends():
    s = AnnealSchedule(start=0.1, end=0.0, end_step=12000, shape="linear")
    assert s.weight(0) == pytest.approx(0.1)
    assert s.weight(6000) == pytest.approx(0.05)
    assert s.weight(12000) == 0.0 and s.weight(50000) == 0.0
    cos = AnnealSchedule(shape="cosine")
    ws = [cos.weight(i) for i in range(0, 13000, 1000)]
    assert ws[0] == pytest.approx(0.1) and ws[-1] == 0.0 and all(a >= b for a, b in zip(ws, ws[1:]))
    step = AnnealSchedule(shape="step")
    assert step.weight(11999) == pytest.approx(0.1) and step.weight(12000) == 0.0
    with pytest.raises(ValueError):
        AnnealSchedule(shape="exp")


def test_motion_encoder_shapes():
    body = MotionEncoder(**configs.get("tiny").body_encoder)
    hand = MotionEncoder(**configs.get("tiny").hand_encoder)
    assert body(torch.rand(2, 3, 3, 64, 64) * 2 - 1).shape == (2, 3, 5, 32)
    assert body(torch.rand(2, 3, 3, 48, 80)).shape == (2, 3, 5, 32)  # other sizes are resampled
    assert hand(torch.rand(2, 3, 2, 3, 32, 32)).shape == (2, 3, 5, 32)
    with pytest.raises(ValueError):
        hand(torch.rand(2, 3, 3, 32, 32))  # one view given, two expected


def test_hand_crops_boxes_and_fallbacks():
    B, Tn, H, W = 1, 4, 64, 96
    frames = -torch.ones(B, Tn, 3, H, W)
    frames[..., 10:20, 60:70] = 1.0  # a bright "right hand"
    kp = torch.zeros(B, Tn, 2, 21, 3)
    kp[..., 1, :, 0] = torch.linspace(61, 69, 21)
    kp[..., 1, :, 1] = torch.linspace(11, 19, 21)
    kp[..., 1, :, 2] = 1.0
    kp[:, 2, 1, :, 2] = 0.0  # right hand lost in frame 2 -> borrowed from the nearest frame
    wrists = torch.zeros(B, Tn, 2, 3)
    wrists[:, 3, 0] = torch.tensor([30.0, 40.0, 1.0])  # left hand: wrist seen only in frame 3
    boxes, visible = hand_boxes(kp, (H, W), (B, Tn), wrists)
    assert boxes.shape == (B, Tn, 2, 3) and visible.shape == (B, Tn, 2)
    assert torch.allclose(boxes[0, 0, 1, :2], torch.tensor([65.0, 15.0]))
    assert visible[0, :, 1].tolist() == [True, True, False, True] and not visible[..., 0].any()
    assert torch.allclose(boxes[0, 2, 1], boxes[0, 1, 1])  # rule 3: nearest frame (ties -> earlier)
    assert torch.allclose(boxes[0, :, 0, :2], torch.tensor([30.0, 40.0]).expand(Tn, 2))  # rule 2 then rule 3
    boxes_none, vis_none = hand_boxes(None, (H, W), (B, Tn))
    assert torch.allclose(boxes_none[..., :2], torch.tensor([48.0, 32.0])) and not vis_none.any()  # rule 4
    crops, _ = crop_hands(frames, kp, (16, 16), wrists)
    assert crops.shape == (B, Tn, 2, 3, 16, 16)
    assert crops[0, 0, 1].mean() > 0.0 and crops[0, 0, 0].mean() < -0.9  # right crop sees the hand, left doesn't


def test_augment_identity_when_off_and_clip_consistent():
    frames = torch.rand(2, 5, 3, 32, 32) * 2 - 1
    off = DrivingAugment(AugmentConfig(enabled=False)).train()
    assert off(frames) is frames
    on = DrivingAugment(AugmentConfig(p_color=1.0))
    assert on.eval()(frames) is frames  # inference: identity
    on.train()
    a = on(frames, torch.Generator().manual_seed(1))
    b = on(frames, torch.Generator().manual_seed(1))
    assert a.shape == frames.shape and torch.equal(a, b) and not torch.allclose(a, frames, atol=1e-2)
    assert a.min() >= -1 and a.max() <= 1
    static = frames[:, :1].expand(-1, 5, -1, -1, -1)  # a clip with no motion stays motionless
    out = on(static, torch.Generator().manual_seed(2))
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)
    # a warp with all strengths at zero is (bilinear-exactly) the identity
    still = DrivingAugment(AugmentConfig(perspective=0, scale=(1, 1), translate=0, brightness=0, contrast=0,
                                         saturation=0, hue=0)).train()
    assert torch.allclose(still(frames, torch.Generator().manual_seed(0)), frames, atol=1e-5)


def test_geometric_decoder_and_masked_loss():
    dec = GeometricDecoder(num_tokens=10, token_dim=32, hidden_dim=64)
    theta = dec(torch.randn(2, T, 10, 32))
    assert theta.shape == (2, T, 306) and dec.pose_dim == 306
    body, hands = dec.split(theta)
    assert body.shape == (2, T, 21, 6) and hands.shape == (2, T, 2, 15, 6)
    target = torch.zeros(2, T, 306)
    pred = torch.ones(2, T, 306)
    valid = torch.zeros(2, T)
    valid[0, :3] = 1
    pred[1] = 100.0  # only invalid frames are wrong
    pred[0, 3:] = 100.0
    assert masked_pose_loss(pred, target, valid).item() == pytest.approx(1.0)
    assert masked_pose_loss(pred, target, torch.zeros(2, T)).item() == 0.0


def test_flow_matching_and_exact_euler():
    fm = FlowMatching({"shift": 3.0})
    t = fm.sample_t(1000, generator=torch.Generator().manual_seed(0))
    assert 0 <= t.min() and t.max() <= 1 and t.mean() > 0.6  # shift > 1 favours noisy t
    assert shift_timesteps(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist() == pytest.approx([0.0, 0.75, 1.0])
    x0, eps = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    xt = fm.noisy(x0, eps, torch.tensor([0.0, 1.0]))
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[1], eps[1])
    assert torch.allclose(fm.velocity_target(x0, eps), eps - x0)
    # the exact velocity of a point mass at x0 is (x_t - x0) / t; Euler on linear paths must land on x0
    out = fm.sample(lambda x, ts: (x - x0) / (ts / 1000).view(-1, 1, 1), eps, num_steps=4)
    assert torch.allclose(out, x0, atol=1e-5)


# ---------------------------------------------------------------- generator vs stock Wan
def _dit_inputs(in_channels, B=2, text_len=7, text_dim=32):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(B, in_channels, F, 8, 8, generator=g), torch.tensor([700.0, 30.0][:B]),
            torch.randn(B, text_len, text_dim, generator=g), torch.randn(B, T, 10, 32, generator=g))


@pytest.mark.parametrize("variant", [{}, {"motion_attention": "full"}, {"motion_conditioning": "channel_concat"}])
def test_generator_equals_stock_at_init(tmp_path, variant):
    stock = WanTransformer3DModel(**stock_tiny_config()).eval()
    stock.save_pretrained(tmp_path / "transformer")
    gen_cfg = configs.get("tiny").generator
    model = DimoWanTransformer.from_stock_pretrained(str(tmp_path), subfolder="transformer", in_channels=36,
                                                     **motion_args(gen_cfg, **variant)).eval()
    info = model.loading_info
    assert info["missing_motion"] and all("motion" in k for k in info["missing_motion"])
    assert info["adapted"] == ["patch_embedding.weight"]  # 16 -> 36 (+16 motion) input channels, zero-filled
    assert set(model.motion_parameter_names()) == set(info["missing_motion"])
    stock_sd = stock.state_dict()
    for k, v in model.state_dict().items():  # every stock tensor was loaded unchanged
        if k in stock_sd and k != "patch_embedding.weight":
            assert torch.equal(v, stock_sd[k]), k
    x, ts, text, motion = _dit_inputs(16)
    cond = torch.randn(2, 20, F, 8, 8)
    with torch.no_grad():
        ref = stock(x, ts, text).sample
        out = model(torch.cat([x, cond], 1), ts, text, motion_tokens=motion).sample
    assert out.shape == (2, 16, F, 8, 8)
    assert torch.allclose(out, ref, atol=1e-6)


def test_generator_i2v_512_token_trap(tmp_path):
    stock = WanTransformer3DModel(**stock_tiny_config(in_channels=36, image_dim=16, added_kv_proj_dim=24)).eval()
    stock.save_pretrained(tmp_path)
    model = DimoWanTransformer.from_stock_pretrained(str(tmp_path), **motion_args(configs.get("tiny").generator))
    assert model.loading_info["adapted"] == []  # I2V already has 36 input channels
    x, ts, text, motion = _dit_inputs(36)
    img = torch.randn(2, 4, 16)
    with pytest.raises(ValueError, match="512"):
        model(x, ts, text, motion_tokens=motion, encoder_hidden_states_image=img)
    with pytest.raises(ValueError, match="image"):
        model(x, ts, pad_text_embeddings(text), motion_tokens=motion)
    with torch.no_grad():
        out = model.eval()(x, ts, pad_text_embeddings(text), motion_tokens=motion,
                           encoder_hidden_states_image=img).sample
        ref = stock(x, ts, pad_text_embeddings(text), encoder_hidden_states_image=img).sample
    assert torch.allclose(out, ref, atol=1e-6)


def test_motion_attention_is_per_latent_frame():
    """With a non-zero motion output projection, changing the motion tokens of latent frame 2's chunk
    (driving frames 5..8) changes only latent frame 2's video tokens within one block."""
    gen = DimoWanTransformer(**configs.get("tiny").generator).eval()
    block = gen.blocks[0]
    assert isinstance(block, DimoWanTransformerBlock)
    torch.nn.init.normal_(block.attn_motion.to_out[0].weight, std=0.5)
    _, ts, text, motion = _dit_inputs(36, B=1)
    motion2 = motion.clone()
    motion2[:, 5:9] += 1.0
    hw = 16  # (8/2) x (8/2) tokens per latent frame
    hidden = torch.randn(1, F * hw, 24)
    temb = gen.condition_embedder(ts, text, None)[1].unflatten(1, (6, -1))
    rope = gen.rope(torch.zeros(1, 36, F, 8, 8))
    ctx = gen.condition_embedder.text_embedder(text)
    with torch.no_grad():
        a = block(hidden, ctx, temb, rope, gen.embed_motion(motion, F))
        b = block(hidden, ctx, temb, rope, gen.embed_motion(motion2, F))
    changed = (a - b).abs().amax(-1).view(F, hw).amax(-1)
    assert changed[2] > 1e-3 and torch.all(changed[[0, 1, 3, 4]] == 0)
    with pytest.raises(ValueError, match="driving frames"):
        gen.embed_motion(motion[:, :16], F)


# ---------------------------------------------------------------- the whole model
def test_shapes_at_every_interface():
    model = DimoModel(configs.get("tiny")).eval()
    batch = make_batch(model.config, B=2)
    z = model.encode_motion(batch["driving_frames"], batch["hand_keypoints"])
    assert z.shape == (2, T, 10, 32)
    assert model.geometric_decoder(z).shape == (2, T, 306)
    assert model.dit_input(batch["target_latents"], batch["reference_latents"]).shape == (2, 36, F, 8, 8)
    out = model.training_losses(batch, step=0)
    assert set(out) == {"loss", "diffusion_loss", "geometric_loss", "geometric_weight"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert out["loss"].item() == pytest.approx(out["diffusion_loss"].item() + 0.1 * out["geometric_loss"].item(),
                                               rel=1e-5)
    late = model.training_losses(batch, step=12000)
    assert late["loss"].item() == late["diffusion_loss"].item() and late["geometric_weight"] == 0  # annealed


def test_gradients_reach_encoders_and_decoder():
    cfg = configs.get("tiny", p_drop_motion=0.0, p_drop_text=0.0)
    model = DimoModel(cfg).train()
    batch = make_batch(cfg)
    noise, t = torch.randn(1, 16, F, 8, 8), torch.tensor([0.5])

    def grad_norms(loss_key):
        model.zero_grad()
        model.training_losses(batch, step=0, noise=noise, t=t)[loss_key].backward()
        return {n: sum(p.grad.abs().sum().item() for p in getattr(model, n).parameters() if p.grad is not None)
                for n in ("body_encoder", "hand_encoder", "geometric_decoder")}

    g0 = grad_norms("diffusion_loss")  # zero-init motion projections: no diffusion gradient to encoders yet
    assert g0["body_encoder"] == 0 and g0["hand_encoder"] == 0
    g_geo = grad_norms("loss")  # ... but the geometric loss reaches them from step 0
    assert g_geo["body_encoder"] > 0 and g_geo["hand_encoder"] > 0 and g_geo["geometric_decoder"] > 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.step()  # one step makes attn_motion.to_out non-zero
    g1 = grad_norms("diffusion_loss")
    assert g1["body_encoder"] > 0 and g1["hand_encoder"] > 0


def test_gradient_checkpointing_matches():
    cfg = configs.get("tiny", p_drop_motion=0.0, p_drop_text=0.0)
    model = DimoModel(cfg).train()
    for block in model.generator.blocks:  # make the motion path live so its gradients are compared too
        torch.nn.init.normal_(block.attn_motion.to_out[0].weight, std=0.1)
    batch = make_batch(cfg)
    noise, t = torch.randn(1, 16, F, 8, 8), torch.tensor([0.3])

    def run():
        model.zero_grad()
        loss = model.training_losses(batch, step=0, generator=torch.Generator().manual_seed(0), noise=noise, t=t)
        loss["loss"].backward()
        return loss["loss"].item(), model.body_encoder.patch_embed.weight.grad.clone()

    l0, g0 = run()
    model.enable_gradient_checkpointing()
    l1, g1 = run()
    assert l0 == pytest.approx(l1, rel=1e-6) and torch.allclose(g0, g1, atol=1e-6) and g0.abs().sum() > 0


def test_save_load_roundtrip(tmp_path):
    cfg = configs.get("tiny")
    model = DimoModel(cfg)
    for block in model.generator.blocks:
        torch.nn.init.normal_(block.attn_motion.to_out[0].weight, std=0.1)
    model.save_pretrained(str(tmp_path))
    loaded = DimoModel.from_pretrained(str(tmp_path))
    assert loaded.config == model.config
    batch = make_batch(cfg)
    kw = dict(step=10, noise=torch.randn(1, 16, F, 8, 8), t=torch.tensor([0.4]))
    model.eval(), loaded.eval()
    with torch.no_grad():
        a = model.training_losses(batch, generator=torch.Generator().manual_seed(5), **kw)
        b = loaded.training_losses(batch, generator=torch.Generator().manual_seed(5), **kw)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_dimo_model_from_stock_folder(tmp_path):
    stock = WanTransformer3DModel(**stock_tiny_config())
    stock.save_pretrained(tmp_path / "transformer")
    model = DimoModel.from_stock_pretrained("tiny", str(tmp_path))
    assert model.generator.config.in_channels == 36
    assert torch.equal(model.generator.blocks[1].attn2.to_q.weight, stock.blocks[1].attn2.to_q.weight)
    assert all("motion" in k for k in model.generator.loading_info["missing_motion"])
    out = model.training_losses(make_batch(model.config), step=0)
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("variant", configs.VARIANTS)
def test_every_variant_trains_one_step(variant):
    cfg = configs.get("tiny", variant=variant)
    model = DimoModel(cfg).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = make_batch(cfg, hands=variant != "no_hand")
    batch["pose_valid"] = torch.ones(1, T, 306)  # per entry, as the latent cache stores it (body + both hands)
    batch["pose_valid"][..., 200:] = 0  # hands not seen
    out = model.training_losses(batch, step=0, generator=torch.Generator().manual_seed(0))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert torch.isfinite(out["loss"])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("generator.") for n in changed)
    motion_part = {"smpl_control": "pose_tokenizer."}.get(variant, "body_encoder.")
    if variant in ("no_geo", "smpl_control"):
        # No geometric loss: the motion source learns only through the motion cross-attention, whose output
        # projection starts at zero. Step 1 moves that projection and nothing upstream of it; step 2 reaches
        # the motion source.
        assert not any(n.startswith(motion_part) for n in changed)
        assert any(".attn_motion.to_out." in n for n in changed)
        out = model.training_losses(batch, step=1, generator=torch.Generator().manual_seed(1))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        assert any(n.startswith(motion_part) for n in changed)
    elif variant != "channel_concat":  # grads reach the motion source only through the (zero) projection there
        assert any(n.startswith(motion_part) for n in changed)  # the geometric loss trains it from step 1
    if variant in ("full", "no_hand", "channel_concat"):
        assert out["geometric_weight"].item() == pytest.approx(0.1)
    else:
        assert out["geometric_weight"].item() == 0.0


def test_tiny_overfits_one_clip():
    """Fixed clip, noise and t; no dropout/augmentation: the diffusion loss falls >= 10x in 30 Adam steps
    (observed ~15x). 32 px video -> 20 DiT tokens, which a 24-wide DiT can memorise."""
    cfg = configs.get("tiny", p_drop_text=0.0, p_drop_motion=0.0, augment={"enabled": False})
    model = DimoModel(cfg).train()
    batch = make_batch(cfg, size=32)
    noise, t = torch.randn(batch["target_latents"].shape), torch.tensor([0.6])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = model.training_losses(batch, step=10**6, noise=noise, t=t)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["diffusion_loss"].item())
    print(f"overfit: diffusion loss {losses[0]:.3f} -> {losses[-1]:.4f} ({losses[0] / losses[-1]:.1f}x)")
    assert losses[0] / losses[-1] >= 10, losses


# ---------------------------------------------------------------- codec, text, sampling
@pytest.fixture(scope="module")
def codec():
    return LatentCodec.tiny()


def test_latent_codec_shapes(codec):
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    lat = codec.encode(video)
    assert lat.shape == (1, 16, 3, 4, 4) == (1, *codec.latent_shape(9, 32, 32))
    assert torch.allclose(codec.encode_image(video[:, :, 0]), lat[:, :, :1], atol=1e-5)  # causal VAE
    raw = codec.vae.encode(video).latent_dist.mode()
    assert torch.allclose(lat, (raw - codec.mean) / codec.std, atol=1e-5)
    rec = codec.decode(lat)
    assert rec.shape == video.shape and rec.abs().max() <= 1
    assert codec.encode_reference_condition(video[:, :, 0], 9).shape == (1, 16, 3, 4, 4)


def test_text_encoder_minilm_offline():
    enc = FrozenTextEncoder.minilm(max_length=16)
    emb, mask = enc.encode(["a person dances, the camera orbits left", "walking"])
    assert emb.shape == (2, 16, 384) and enc.output_dim == 384
    assert mask[1].sum() < mask[0].sum() and torch.all(emb[~mask] == 0) and emb[mask].abs().sum() > 0
    proj = TextProjection(384, 32)
    assert proj(emb, mask).shape == (2, 16, 32) and torch.all(proj(emb, mask)[~mask] == 0)
    assert isinstance(TextProjection(4096, 4096).proj, torch.nn.Identity)


def test_sampler_produces_video(codec):
    model = DimoModel(configs.get("tiny"))
    batch = make_batch(model.config, size=32)
    ref_img = torch.rand(1, 3, 32, 32) * 2 - 1
    video = model.generate(codec, ref_img, batch["driving_frames"], batch["text_embeddings"], batch["text_mask"],
                           hand_keypoints=batch["hand_keypoints"], num_steps=2, guidance_text=4.0,
                           guidance_motion=2.0, generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, T, 32, 32) and torch.isfinite(video).all() and video.abs().max() <= 1
    assert model.training  # generate() restores the mode
    z = model.encode_motion(batch["driving_frames"], batch["hand_keypoints"])
    noise = torch.randn(1, 16, F, 4, 4)
    ref = codec.encode_image(ref_img)
    plain = model.sample_latents(ref, z, batch["text_embeddings"], num_steps=2, guidance_text=1.0, noise=noise)
    guided = model.sample_latents(ref, z, batch["text_embeddings"], num_steps=2, guidance_text=3.0,
                                  guidance_motion=2.0, noise=noise)
    assert plain.shape == guided.shape == (1, 16, F, 4, 4) and not torch.allclose(plain, guided)


# ---------------------------------------------------------------- real scale, without allocating
def test_real_scale_parameter_counts():
    t2v = configs.get("wan2.1-t2v-1.3b")
    stock_t2v = stock_param_count({**t2v.generator, "in_channels": 16})
    assert 1.2e9 < stock_t2v < 1.6e9  # Wan2.1-T2V-1.3B
    i2v = configs.get("wan2.1-i2v-14b")
    stock_i2v = stock_param_count(i2v.generator)
    assert 1.3e10 < stock_i2v < 1.8e10  # Wan2.1-I2V-14B
    with torch.device("meta"):
        gen = DimoWanTransformer(**t2v.generator)
    motion = sum(math.prod(p.shape) for n, p in gen.named_parameters() if "motion" in n)
    total = sum(math.prod(p.shape) for p in gen.parameters())
    extra_in = 20 * 1536 * 4 + 0  # 20 new input channels of the 1x2x2 patch embedding
    assert total == stock_t2v + motion + extra_in
    assert motion == 30 * (4 * 1536 * 1536 + 4 * 1536 + 2 * 1536 + 2 * 1536) + (1024 * 1536 + 1536 + 1536 ** 2
                                                                                 + 1536) + 10 * 1536 + 10 * 1024
