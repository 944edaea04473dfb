"""Joining Ray: a local instance by default, a cluster when an address is given."""

import logging
import math
import signal
import threading

import ray

log = logging.getLogger(__name__)


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Start a local Ray (address None) or join the cluster at `address`; idempotent.

    Local Ray ≥ 2.59 turns on token authentication and writes its token to ~/.ray/auth_token;
    the service keeps that default. Clusters set RAY_AUTH_MODE=token and the same token on every
    node (the README's configuration section).
    """
    if ray.is_initialized():
        return
    # ray.init replaces the SIGTERM handler with one that exits at once; keep the host's (e.g.
    # uvicorn's graceful shutdown, which stops jobs at a round boundary and flushes MLflow).
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    if address is None:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    if sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    log.info("Ray ready: %s", ray.cluster_resources())


def total_resource(name: str) -> float:
    """How much of a resource ("CPU", "GPU") the cluster advertises (0 when Ray is not running)."""
    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get(name, 0.0))


def gpus_needed(workers: int, gpus_per_worker: float) -> float:
    """Whole GPUs that `workers` actors of `gpus_per_worker` occupy.

    Ray packs fractional actors onto one GPU (0.4 + 0.4 fit, a third 0.4 needs a second GPU)
    and gives whole-number requests whole GPUs.
    """
    if gpus_per_worker >= 1 or gpus_per_worker == 0:
        return workers * gpus_per_worker
    return math.ceil(workers / math.floor(1 / gpus_per_worker))


def shortfall(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> str | None:
    """Why the cluster cannot hold `workers` actors of this size, or None if it can.

    Checked before any actor starts: an actor asking for more than the cluster has would wait
    for ever instead of failing.
    """
    cpus, gpus = workers * cpus_per_worker, gpus_needed(workers, gpus_per_worker)
    if cpus > (available := total_resource("CPU")):
        return f"num_workers={workers} needs {cpus:g} CPUs; the Ray cluster has {available:g}"
    if gpus > (available := total_resource("GPU")):
        return (
            f"num_workers={workers} with gpus_per_worker={gpus_per_worker:g} needs {gpus:g} "
            f"GPUs; the Ray cluster has {available:g}"
        )
    return None


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()
