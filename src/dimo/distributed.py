"""The one place that connects to a Ray cluster (docs/ray.md): `<pipeline>.runner: ray` and its `ray:` block.

`ray.address`: null starts a local cluster here with `ray.num_cpus` CPUs (stopped again when the job ends);
`ray://host:10001` (a KubeRay head's client port) or `auto` joins an existing one; with `address: null` a set
RAY_ADDRESS environment variable wins. Ray is imported only inside these functions: the default (`local`)
runner never imports it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

RUNNERS = ("local", "ray")


@dataclass
class RaySettings:
    """`<pipeline>.ray` in conf/<env>/parameters_<pipeline>.yml."""

    address: str | None = None  # null: a local cluster (or RAY_ADDRESS when set); ray://... or auto: join one
    num_cpus: int = 2  # CPUs of the local cluster we start (ignored when joining one)
    actors: int = 2  # actors in the pool: each loads the models once
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # 1 at real scale: one estimator / VAE per GPU
    batch_size: int = 1  # work items (fit batches / encode batches) per actor call
    max_task_retries: int = 3  # a batch whose actor died is retried on a restarted actor this often

    @classmethod
    def from_params(cls, params: dict | None) -> RaySettings:
        return cls(**(params or {}))


def runner(params: dict, pipeline: str) -> str:
    """`<pipeline>.runner`: local (default) or ray; anything else is an error naming the parameter."""
    name = params.get("runner") or "local"
    if name not in RUNNERS:
        raise ValueError(f"{pipeline}.runner must be one of {RUNNERS}, got {name!r}")
    return name


def _address(settings: RaySettings) -> str | None:
    return settings.address or os.environ.get("RAY_ADDRESS") or None


def connect(settings: RaySettings) -> dict:
    """Connect (starting a local cluster when no address is set); returns {"address", "started_here",
    "init_seconds"}. An already connected session (a caller's) is reused: `disconnect` then leaves it alone."""
    import ray

    if ray.is_initialized():
        return {"address": "existing", "started_here": False, "init_seconds": 0.0}
    address = _address(settings)
    t0 = time.perf_counter()
    if address:  # the cluster's nodes run the same image as this driver (dimo installed): docs/ray.md
        ray.init(address=address, log_to_driver=False)
    else:  # workers are forked from here: they inherit this environment (PYTHONPATH, caches)
        ray.init(num_cpus=settings.num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    info = {"address": address or "local", "started_here": True, "init_seconds": time.perf_counter() - t0}
    log.info("ray: connected to %s in %.1f s (%s)", info["address"], info["init_seconds"],
             ray.cluster_resources())
    return info


def disconnect(info: dict) -> None:
    """End what `connect` started (a cluster started here stops; a joined one keeps running)."""
    import ray

    if info.get("started_here") and ray.is_initialized():
        ray.shutdown()


@contextmanager
def cluster(settings: RaySettings) -> Iterator[dict]:
    """`connect` for the block, `disconnect` after it."""
    info = connect(settings)
    try:
        yield info
    finally:
        disconnect(info)


def actor_pool_args(settings: RaySettings) -> dict:
    """`Dataset.map_batches` arguments of an actor pool: its size, resources per actor, and restarts (a killed
    actor is restarted and its batch retried, so one lost worker never ends the job)."""
    import ray

    return {"compute": ray.data.ActorPoolStrategy(size=settings.actors), "num_cpus": settings.cpus_per_actor,
            "num_gpus": settings.gpus_per_actor or None, "batch_size": settings.batch_size,
            "max_restarts": -1, "max_task_retries": settings.max_task_retries}
