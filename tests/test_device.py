"""Device bugs caught without a GPU (issue 13): the whole training path and the sampler on a device that is not
the CPU, for every model variant, in fp32 and bf16; and a bf16 stage through the DeepSpeed engine on CPU.

The stand-in accelerator is torch's fake-tensor mode on the "meta" device. Fake tensors carry a device, shape and
dtype but no data (nothing is computed), and any op that mixes devices raises FakeTensorDeviceMismatchError, as
CUDA would. Fake "cuda" tensors can be created in this CPU-only build but not used: indexing, `copy_` and
`__setitem__` ask for a CUDA device guard that is not linked in ("PyTorch is not linked with support for cuda
devices"), so "cuda" appears only where nothing is indexed (the batch move). Two CUDA rules fake tensors do not
check are added by `GeneratorDeviceCheck`: a kernel refuses a generator of another device type.
Like DeepSpeed, the tests build the model on the CPU and then move it (`module.to(device)`).

On a real device the same paths run for real: `DIMO_TEST_DEVICE=cuda pytest tests/test_device.py` (what
benchmarks/gpu_check.py does; its dry run uses `cpu`) puts every tensor that the fake device gets on that device,
with no fake-tensor mode (CUDA itself refuses mismatched devices and generators).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode
from torch.overrides import TorchFunctionMode

from dimo.models import DimoModel, LatentCodec, configs, draws
from dimo.training.batches import PairBatches, move_batch
from dimo.training.loop import StageSettings, deepspeed_config, step_generator, step_inputs, train_stage

REAL_DEVICE = os.environ.get("DIMO_TEST_DEVICE")  # unset: the fake accelerator (see the module docstring)
DEVICE = torch.device(REAL_DEVICE or "meta")
if DEVICE.type == "cuda" and DEVICE.index is None:  # tensors report cuda:<n>, never plain cuda
    DEVICE = torch.device("cuda", torch.cuda.current_device())
MISMATCH = RuntimeError if REAL_DEVICE else FakeTensorDeviceMismatchError  # what a device mismatch raises
T, SIZE, F, TEXT_LEN = 17, 64, 5, 8  # driving frames, pixels, latent frames, text tokens
ROOT = Path(__file__).resolve().parents[1]


class GeneratorDeviceCheck(TorchFunctionMode):
    """CUDA's rule that fake tensors skip: a random op's generator must live on the device it draws on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator):
            device = kwargs.get("device")
            if device is None:  # in-place draws (x.uniform_) and *_like draw where their tensor lives
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                device = tensors[0].device if tensors else torch.get_default_device()
            if torch.device(device).type != generator.device.type:
                raise RuntimeError(f"{getattr(func, '__name__', func)}: expected a '{torch.device(device).type}' "
                                   f"device type for generator but found '{generator.device.type}'")
        return func(*args, **kwargs)


@contextmanager
def fake_device():
    """Inside: real CPU tensors become fake ones on first use, so a model built outside, the cache and the CPU
    generator are the real ones, and everything after the device move has no data. On a real device: no fake mode."""
    if REAL_DEVICE:
        with GeneratorDeviceCheck():
            yield
        return
    with FakeTensorMode(allow_non_fake_inputs=True), GeneratorDeviceCheck():
        yield


def clip_entry(cfg, seed: int) -> dict:
    """A latent-cache entry as preprocess writes it (dtypes included: uint8 frames, uint8 text mask)."""
    g = torch.Generator().manual_seed(seed)
    hands = torch.rand(T, 2, 21, 3, generator=g)
    hands[..., :2] = hands[..., :2] * SIZE * 0.3 + SIZE * 0.35
    return {
        "latents": torch.randn(16, F, SIZE // 8, SIZE // 8, generator=g),
        "text_embeddings": torch.randn(TEXT_LEN, cfg.text_in_dim, generator=g),
        "text_mask": torch.ones(TEXT_LEN, dtype=torch.uint8),
        "driving_frames": torch.randint(0, 256, (T, 3, SIZE, SIZE), generator=g, dtype=torch.uint8),
        "hand_keypoints": hands,
        "wrist_keypoints": hands[:, :, 0].clone(),
        "pose_targets": torch.randn(T, 306, generator=g),
        "pose_valid": torch.ones(T, 306),
    }


def pair_batches(cfg, micro_batch: int = 2) -> PairBatches:
    """Two views of one motion: cross-view pairs a->b and b->a, as stage 3 draws them."""
    cache = {"a": clip_entry(cfg, 0), "b": clip_entry(cfg, 1)}
    pairs = pd.DataFrame({"kind": ["cross_view", "cross_view"], "driving_clip_id": ["a", "b"],
                          "target_clip_id": ["b", "a"], "group_id": ["g", "g"]})
    return PairBatches(pairs, cache, {"cross_view": 1.0}, micro_batch, seed=0)


def settings(**kw) -> StageSettings:
    base = dict(name="stage", steps=2, global_step_offset=0, global_batch=2, micro_batch=1, lr=1e-3, seed=0,
                checkpoint_every=100, deepspeed_config=json.loads((ROOT / "conf/deepspeed/zero2.json").read_text()))
    return StageSettings(**{**base, **kw})


# ---------------------------------------------------------------- the training path on the fake device
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", configs.VARIANTS)
def test_training_step_on_a_device_for_every_variant(variant, dtype):
    """Collation, the loop's device move, augmentation, hand crops, encoders, generator, losses and backward, with
    the loop's CPU step generator; bf16 as DeepSpeed trains it (bf16 weights, fp32 batches)."""
    cfg = configs.get("tiny", variant=variant)
    model = DimoModel(cfg).to(dtype).train()  # DeepSpeed: module.bfloat16(), then module.to(engine.device)
    batches = pair_batches(cfg)
    assert model.augment.active and (cfg.hand_encoder is None) == (variant in ("no_hand", "smpl_control"))
    with fake_device():
        model.to(DEVICE)
        batch, generator = step_inputs(batches, settings(), step=0, micro=0, rank=0, device=DEVICE)
        assert {v.device for v in batch.values()} == {DEVICE}
        out = model(batch, step=0, generator=generator)  # what engine(batch, ...) calls
        out["loss"].backward()
    assert out["loss"].device == DEVICE and out["loss"].dtype == torch.float32 and out["loss"].shape == ()
    params = model.trainable_parameters()
    with_grad = [p for p in params if p.grad is not None]
    assert {p.grad.device for p in with_grad} == {DEVICE}
    assert {p.grad.dtype for p in with_grad} == {dtype}
    assert len(with_grad) >= 0.9 * len(params)  # the step reached (nearly) every part
    if model.geometric_decoder is not None:
        assert all(p.grad is not None for p in model.geometric_decoder.parameters())


def test_sampler_on_a_device():
    """`generate`: motion encoding, the reference latent from the codec, CFG sampling from a CPU generator, decode."""
    cfg = configs.get("tiny")
    model, codec, entry = DimoModel(cfg), LatentCodec.tiny(), clip_entry(cfg, 0)
    with fake_device():
        model.to(DEVICE)
        codec.to(DEVICE)
        frames = (entry["driving_frames"].float() / 127.5 - 1)[None].to(DEVICE)
        video = model.generate(codec, frames[:, 0], frames, entry["text_embeddings"][None].to(DEVICE),
                               entry["text_mask"][None].bool().to(DEVICE),
                               hand_keypoints=entry["hand_keypoints"][None].to(DEVICE), num_steps=2,
                               guidance_text=2.0, guidance_motion=1.5, generator=torch.Generator().manual_seed(0))
    assert video.device == DEVICE and video.shape == (1, 3, T, SIZE, SIZE)


@pytest.mark.skipif(DEVICE.type == "cpu", reason="DIMO_TEST_DEVICE=cpu: nothing can mismatch the CPU")
def test_the_fake_device_catches_what_cuda_would():
    """The harness itself: a CPU tensor meeting a device tensor, and a CPU generator drawing on the device, raise."""
    with fake_device():
        on_device = torch.zeros(3, device=DEVICE)
        with pytest.raises(MISMATCH):
            on_device + torch.ones(3)
        with pytest.raises(RuntimeError, match="device type for generator"):
            torch.randn(3, generator=torch.Generator(), device=DEVICE)
        assert draws.randn(3, torch.Generator(), DEVICE).device == DEVICE


def test_move_batch_targets_cuda_and_is_free_on_cpu():
    cuda = DEVICE if REAL_DEVICE else torch.device("cuda", 0)  # a CPU-only build makes fake cuda tensors only
    batch = pair_batches(configs.get("tiny")).batch(0)
    with fake_device():
        moved = move_batch({**batch, "note": "kept"}, cuda)
    assert {v.device for k, v in moved.items() if k != "note"} == {cuda} and moved["note"] == "kept"
    assert {k: v.dtype for k, v in moved.items() if k != "note"} == {k: v.dtype for k, v in batch.items()}
    same = move_batch(batch, "cpu")
    assert all(same[k] is batch[k] for k in batch)  # the CPU run keeps its tensors (and its numbers)


# ---------------------------------------------------------------- random draws: same numbers on every device
def test_draws_are_torchs_own_draws_on_cpu():
    """Bit-identical to drawing with torch directly (the resume tests and the default run depend on it), and the
    generator advances by the same amount."""
    for draw, ref in ((draws.rand, torch.rand), (draws.randn, torch.randn)):
        for size, dtype in (((2, 3), None), (5, torch.float64)):
            g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
            ours = draw(size, g1, "cpu", dtype)
            theirs = ref(size, generator=g2, device="cpu", dtype=dtype)
            assert torch.equal(ours, theirs) and ours.dtype == theirs.dtype
            assert torch.equal(g1.get_state(), g2.get_state())
    torch.manual_seed(3)
    a = draws.rand(4)
    torch.manual_seed(3)
    assert torch.equal(a, torch.rand(4))  # no generator: the global RNG, as torch does


def test_one_training_step_is_unchanged_on_cpu():
    """The fp32 CPU step through step_inputs is the step the loop always took (batch as collated, same draws)."""
    cfg = configs.get("tiny")
    torch.manual_seed(0)
    model = DimoModel(cfg).train()
    batches = pair_batches(cfg)
    batch, generator = step_inputs(batches, settings(), 3, 1, 0, "cpu")
    raw = batches.batch(3, 1, 0)
    assert all(torch.equal(batch[k], raw[k]) for k in raw)
    loss = model(batch, step=3, generator=generator)["loss"]
    again = model(raw, step=3, generator=step_generator(0, 3, 1, 0))["loss"]
    assert torch.equal(loss, again)


# ---------------------------------------------------------------- precision and the DeepSpeed bf16 stage on CPU
def test_precision_setting_chooses_deepspeeds_bf16():
    on_gpu = torch.cuda.is_available()
    assert deepspeed_config(settings(), 1)["bf16"]["enabled"] is on_gpu  # auto: the json's bf16 on GPU only
    assert deepspeed_config(settings(precision="bf16"), 1)["bf16"]["enabled"] is True
    assert deepspeed_config(settings(precision="fp32"), 1)["bf16"]["enabled"] is False
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32"):
        deepspeed_config(settings(precision="fp16"), 1)


def test_a_bf16_stage_through_the_deepspeed_engine_on_cpu(tmp_path):
    """train_stage with precision bf16 and ZeRO-2 on CPU: bf16 weights, fp32 master weights in the optimizer,
    finite losses, weights that moved. In a child process: DeepSpeed initialises torch.distributed for good."""
    out = subprocess.run([sys.executable, __file__, "bf16-stage", str(tmp_path)], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["param_dtypes"] == ["torch.bfloat16"]
    assert result["master_dtypes"] == ["torch.float32"] and result["engine_bf16"]
    assert result["finite"] and result["moved"] > 0.5, result
    assert (tmp_path / "ckpt" / "latest").is_file()


def _bf16_stage(folder: Path) -> dict:
    import deepspeed

    cfg = configs.get("tiny")
    torch.manual_seed(0)
    model = DimoModel(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = train_stage(model, pair_batches(cfg, micro_batch=1), settings(precision="bf16"), folder / "ckpt")
    changed = [not torch.equal(p.detach().float(), before[n].to(p.device, p.dtype).float())  # on a GPU: on cuda
               for n, p in model.named_parameters()]
    probe = DimoModel(cfg)  # the optimizer's own copy of the weights
    engine, *_ = deepspeed.initialize(model=probe, model_parameters=probe.trainable_parameters(),
                                      config=deepspeed_config(settings(precision="bf16"), 1))
    return {"param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "master_dtypes": sorted({str(t.dtype) for t in engine.optimizer.single_partition_of_fp32_groups}),
            "engine_bf16": engine.bfloat16_enabled(),
            "finite": all(torch.isfinite(torch.tensor(v)).item() for v in stats["final_losses"].values()),
            "moved": sum(changed) / len(changed)}


if __name__ == "__main__" and sys.argv[1:2] == ["bf16-stage"]:
    print(json.dumps(_bf16_stage(Path(sys.argv[2]))))
