"""Joining Ray: a local instance by default, a cluster when an address is given."""

import logging
import signal
import threading

import ray

log = logging.getLogger(__name__)


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Start a local Ray (address None) or join the cluster at `address`; idempotent.

    Local Ray ≥ 2.59 turns on token authentication and writes its token to ~/.ray/auth_token;
    the service keeps that default. Clusters set RAY_AUTH_MODE=token and the same token on every
    node (see the README).
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


def total_cpus() -> float:
    """CPUs the cluster advertises (0 when Ray is not running)."""
    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("CPU", 0.0))


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()
