"""The metric registry: every metric the benchmark reports, written once with how it is computed and read.

Scoring (`benchmark.score`, `set_metrics`, `codec_reference`), the benchmark tables (`summarise`, `markdown`),
the ablation's Table 2 and the annealing sweep's direction check all read this. Adding a metric = its function
(in `metrics.py`, or anywhere) + one `register(Metric(...))` line below + its name in the YAML that selects it
(`evaluate.metrics` for a per-pair metric).

Kinds:
* `pair`: one value per (generated, target) video pair, `compute(generated, target, weights)`; averaged per table row.
* `set`: one value per benchmark set, `compute(generated_videos, target_videos, weights)` (lists of videos).
* `pose`: per pair from the pseudo-labeller run on the generated video (`benchmark.pose_and_camera`).
* `alias`: another metric's value under the name a paper uses (`lpips` = `lpips_alex`, Table 2's LPIPS).
The registration order is the column order of every table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dimo.evaluation import metrics as M

KINDS = ("pair", "set", "pose", "alias")


@dataclass(frozen=True)
class Metric:
    name: str                      # the column in score tables, YAML and MLflow metric names
    kind: str                      # one of KINDS
    higher_is_better: bool
    compute: Callable | None = None  # pair: (gen, tgt, WeightsConfig); set: (gens, tgts, WeightsConfig)
    label: str = ""                # header in report tables (Table 2); default: the name
    fmt: str = ".4g"               # number format in report tables
    of: str | None = None          # alias: the metric whose value it repeats

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def header(self) -> str:
        return self.label or self.name


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.kind not in KINDS:
        raise ValueError(f"metric {metric.name!r}: unknown kind {metric.kind!r}; one of {KINDS}")
    if (metric.compute is None) == (metric.kind in ("pair", "set")):
        needs = "needs a" if metric.compute is None else "takes no"
        raise ValueError(f"metric {metric.name!r}: a {metric.kind} metric {needs} compute function")
    if metric.kind == "alias" and metric.of not in METRICS:
        raise ValueError(f"metric {metric.name!r}: alias of unknown metric {metric.of!r}")
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


@contextmanager
def registered(metric: Metric) -> Iterator[Metric]:
    """A metric registered for the duration of a block (tests, experiments), then removed."""
    register(metric)
    try:
        yield metric
    finally:
        METRICS.pop(metric.name, None)


def get(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {list(METRICS)}")
    return METRICS[name]


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered metric names in table order, all of them or those of one kind."""
    return tuple(m.name for m in METRICS.values() if kind is None or m.kind == kind)


def check(requested, kind: str) -> None:
    """Refuse names that are not registered metrics of `kind`, listing the known ones."""
    known = names(kind)
    unknown = sorted(set(requested) - set(known))
    if unknown:
        word = {"pair": "per-pair", "set": "set-level"}.get(kind, kind)
        raise ValueError(f"unknown {word} metrics {unknown}; known: {list(known)}")


def _lpips(backbone: str) -> Callable:
    return lambda gen, tgt, w: M.lpips(gen, tgt, backbone, w.lpips_dir, w.device, w.batch_size)


register(Metric("psnr", "pair", True, lambda gen, tgt, w: M.psnr(gen, tgt), "PSNR", ".1f"))
register(Metric("ssim", "pair", True, lambda gen, tgt, w: M.ssim(gen, tgt), "SSIM", ".3f"))
register(Metric("lpips_alex", "pair", False, _lpips("alex"), "LPIPS (AlexNet)", ".3f"))
register(Metric("lpips_vgg", "pair", False, _lpips("vgg"), "LPIPS (VGG)", ".3f"))
register(Metric("lpips", "alias", False, label="LPIPS", fmt=".3f", of="lpips_alex"))  # the lpips package's default
register(Metric("fid", "set", False, lambda gens, tgts, w: M.fid(gens, tgts, w.inception_path, w.device, w.batch_size),
                "FID", ".1f"))
register(Metric("fvd", "set", False, lambda gens, tgts, w: M.fvd(gens, tgts, w.i3d_path, w.fvd_num_frames, w.fvd_clips,
                                                                 w.device, max(1, w.batch_size // 4)), "FVD", ".1f"))
register(Metric("mpjpe_mm", "pose", False, label="MPJPE (mm)", fmt=".1f"))
register(Metric("pa_mpjpe_mm", "pose", False, label="PA-MPJPE (mm)", fmt=".1f"))
register(Metric("detection_rate", "pose", True, label="detection rate", fmt=".2f"))
register(Metric("camera_following", "pose", True, label="camera following", fmt=".2f"))
