"""Checks of the local weight folders a run reads, before it loads anything: the folder exists, the files the
loaders open are there, and its config agrees with the configured model.

A Wan2.1 diffusers folder holds `transformer/`, `vae/`, `text_encoder/` + `tokenizer/` and, for I2V,
`image_encoder/` + `image_processor/`. Each check reads only json files (milliseconds, no torch) and returns
None or (folder, why): the preflight (`dimo.preflight`) turns that into its one line. The loaders
(`DimoWanTransformer.from_stock_pretrained`, `LatentCodec.from_pretrained`, `FrozenTextEncoder.umt5`, the
preprocess image encoder) accept the component folder itself too, so the checks do.
"""

from __future__ import annotations

import json
from pathlib import Path

LATENT_CHANNELS = 16  # Wan2.1's VAE z_dim (dimo.models.dimo_model.LATENT_CHANNELS)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # either one (fast or sentencepiece tokenizer)


def component(root: str | Path, name: str) -> Path:
    """`<root>/<name>` when it exists, else `root` (a path that already points at the component)."""
    root = Path(root)
    return root / name if (root / name).is_dir() else root


def _weights_problem(folder: Path) -> str | None:
    """Weights as the loaders read them: one or more *.safetensors, or an index whose shards all exist."""
    for index in sorted(folder.glob("*.safetensors.index.json")):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"{index.name} lists {missing[0]}, which is missing"
        return None
    return None if any(folder.glob("*.safetensors")) else "no *.safetensors weights"


def _config(folder: Path, what: str) -> tuple[dict | None, tuple[str, str] | None]:
    """(config.json, None), or (None, problem) when the folder, its config or its weights are missing."""
    if not folder.is_dir():
        return None, (str(folder), f"no such folder, {what}")
    if not (folder / "config.json").is_file():
        return None, (str(folder), f"no config.json, {what}")
    if why := _weights_problem(folder):
        return None, (str(folder), f"{why}, {what}")
    try:
        return json.loads((folder / "config.json").read_text()), None
    except json.JSONDecodeError as exc:
        return None, (str(folder), f"config.json is not JSON ({exc.msg})")


def check_transformer(root: str | Path, generator: dict, model_name: str) -> tuple[str, str] | None:
    """A stock Wan transformer for `generator` (the DimoConfig's generator kwargs): same text width, output
    channels and image cross-attention, and no more input channels than ours (T2V's 16 are zero-padded to 36)."""
    folder = component(root, "transformer")
    cfg, problem = _config(folder, "the stock Wan transformer")
    if problem:
        return problem
    want = f"training.model {model_name!r} needs"
    for key in ("text_dim", "out_channels"):
        if cfg.get(key) != generator.get(key):
            return str(folder), f"config.json {key} {cfg.get(key)}, {want} {generator.get(key)}"
    if cfg.get("in_channels", 0) > generator["in_channels"]:
        return str(folder), (f"config.json in_channels {cfg.get('in_channels')}, "
                             f"{want} at most {generator['in_channels']}")
    if cfg.get("image_dim") != generator.get("image_dim"):
        return str(folder), (f"config.json image_dim {cfg.get('image_dim')} (image cross-attention), "
                             f"{want} {generator.get('image_dim')}")
    return None


def check_vae(root: str | Path) -> tuple[str, str] | None:
    folder = component(root, "vae")
    cfg, problem = _config(folder, "the Wan VAE, preprocess.codec.pretrained_path")
    if problem:
        return problem
    if cfg.get("z_dim") != LATENT_CHANNELS:
        return str(folder), (f"config.json z_dim {cfg.get('z_dim')}, "
                             f"the generator reads {LATENT_CHANNELS} latent channels")
    return None


def check_text_encoder(root: str | Path, width: int, model_name: str) -> tuple[str, str] | None:
    """UMT5 weights + tokenizer files; its width (d_model) = the configured model's text input width."""
    folder = component(root, "text_encoder")
    cfg, problem = _config(folder, "the UMT5 text encoder, preprocess.text_encoder.path")
    if problem:
        return problem
    tokenizer = Path(root) / "tokenizer"
    if not tokenizer.is_dir():
        return str(tokenizer), "no such folder, the UMT5 tokenizer beside text_encoder/"
    if not any((tokenizer / f).is_file() for f in TOKENIZER_FILES):
        return str(tokenizer), f"no tokenizer file: {' or '.join(TOKENIZER_FILES)}"
    if cfg.get("d_model") != width:
        return str(folder), (f"config.json d_model {cfg.get('d_model')}, "
                             f"training.model {model_name!r} reads {width}-wide text")
    return None


def check_image_encoder(root: str | Path, image_dim: int, model_name: str) -> tuple[str, str] | None:
    """The I2V CLIP vision tower + its image processor; its width = the generator's image_dim."""
    folder = component(root, "image_encoder")
    cfg, problem = _config(folder, "the CLIP image encoder, preprocess.image_encoder.path")
    if problem:
        return problem
    processor = Path(root) / "image_processor"
    if not (processor / "preprocessor_config.json").is_file():
        return str(processor), "no preprocessor_config.json, the CLIP image processor beside image_encoder/"
    width = cfg.get("hidden_size", (cfg.get("vision_config") or {}).get("hidden_size"))
    if width != image_dim:
        return str(folder), f"config.json hidden_size {width}, training.model {model_name!r} has image_dim {image_dim}"
    return None


def preprocess_problems(preprocess: dict, generator: dict, text_width: int, model_name: str) -> list[tuple[str, str]]:
    """Every weight folder preprocess reads (codec, UMT5, CLIP) against the configured model."""
    out = []
    if path := (preprocess.get("codec") or {}).get("pretrained_path"):
        out.append(check_vae(path))
    text = preprocess.get("text_encoder") or {}
    if text.get("kind") == "umt5":
        out.append(check_text_encoder(text.get("path") or "", text_width, model_name) if text.get("path")
                   else ("preprocess.text_encoder.path", "null, but kind umt5 reads a Wan folder"))
    image = (preprocess.get("image_encoder") or {}).get("path")
    if generator.get("image_dim"):
        out.append(check_image_encoder(image, generator["image_dim"], model_name) if image else
                   ("preprocess.image_encoder.path", f"null, but training.model {model_name!r} has image "
                                                     "cross-attention: set it to the Wan I2V folder"))
    return [p for p in out if p]
