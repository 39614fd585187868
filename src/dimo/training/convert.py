"""A DeepSpeed resume checkpoint -> the model folder `DimoModel.from_pretrained` reads (safetensors per part):

    python -m dimo.training.convert data/06_models/checkpoints/stage2 converted/stage2 [--tag latest]

ZeRO-2 and ZeRO-3 checkpoints written by any number of ranks: DeepSpeed's `zero_to_fp32` merges the fp32 master
weights from every rank's optimizer shard, and the model config is the `dimo_config.json` that
`checkpoints.save` writes into each tag folder. Use it to recover the weights of a run that stopped before
registering, or of any intermediate step. DeepSpeed unpickles the shards (`torch.load(weights_only=False)`):
convert only checkpoints you trust.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from accelerate import init_empty_weights
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from dimo.models import DimoConfig, DimoModel, lora
from dimo.models.dimo_model import CONFIG_NAME
from dimo.training import checkpoints

log = logging.getLogger(__name__)


def resolve_tag(checkpoint_dir: Path, tag: str = checkpoints.LATEST) -> str:
    """The tag folder to convert: `latest` = the last complete checkpoint."""
    resolved = checkpoints.latest_tag(checkpoint_dir) if tag == checkpoints.LATEST else tag
    if resolved is None or not (checkpoint_dir / resolved).is_dir():
        tags = sorted(p.name for p in checkpoint_dir.glob("step-*") if p.is_dir())
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint {tag!r} (tags there: {tags or 'none'})")
    return resolved


def convert(checkpoint_dir: str | Path, out_dir: str | Path, tag: str = checkpoints.LATEST) -> Path:
    """Write the checkpoint's model (fp32, as the optimizer holds it) to `out_dir`; returns `out_dir`."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    tag = resolve_tag(checkpoint_dir, tag)
    config_file = checkpoint_dir / tag / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: missing, so the model's architecture is unknown (checkpoints "
                                f"written before the config was saved with them): copy the {CONFIG_NAME} of the "
                                "model the stage started from there")
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    # zero_to_fp32 returns views into merged flat buffers: own tensors, which safetensors can write
    state = {name: tensor.clone() for name, tensor in state.items()}
    with init_empty_weights(include_buffers=False):  # no random init of weights that are overwritten next
        model = DimoModel(DimoConfig.from_dict(json.loads(config_file.read_text())))
        lora_file = checkpoint_dir / tag / checkpoints.LORA_NAME
        if lora_file.is_file():  # a LoRA run: the same adapters, so its keys load; saved merged like a registration
            lora.add_adapters(model, json.loads(lora_file.read_text()))
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(str(out_dir))
    log.info("converted %s/%s (%d tensors) to %s", checkpoint_dir, tag, len(state), out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", type=Path, help="a stage's checkpoint folder (holds `latest`, step-*/)")
    parser.add_argument("out_dir", type=Path, help="the model folder to write (DimoModel.from_pretrained reads it)")
    parser.add_argument("--tag", default=checkpoints.LATEST, help="a step-<n> folder, or latest (default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.checkpoint_dir, args.out_dir, args.tag)
    except FileNotFoundError as err:
        parser.exit(2, f"dimo.training.convert: {err}\n")


if __name__ == "__main__":
    main()
