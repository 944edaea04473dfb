"""The serial reference φ for a job body, and the comparison the tests hold the service to."""

from typing import Any

import torch
from mlflow import MlflowClient

from reptile.params import Params
from reptile.serial import train_serial
from reptile.tasks import make_family
from service.specs import parse_spec

# Float noise (thread counts, summation order) stays ~1e-7 under SGD. Adam on the pseudo-
# gradient divides by its running RMS, which magnifies the noise of near-zero coordinates to
# ~1e-5 after a few dozen rounds; 1e-4 is still far below any real difference (weights ~0.1–1).
ATOL = 1e-4


def serial_phi(body: dict[str, Any]) -> Params:
    """The φ of the paper's serial loop for the job `body`, on one thread: an actor's small ops
    gain nothing from more, and beside a loaded machine's other processes OpenMP's waiting
    threads made it ~60× slower (2 threads on 2 busy cores: 119 s against 1.9 s for 100 sine
    rounds)."""
    spec = parse_spec(body)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_serial(
            make_family(spec.task, **spec.task_options()), spec.meta_config(), spec.seed
        )
    finally:
        torch.set_num_threads(threads)


def assert_same_phi(phi: Params, reference: Params) -> None:
    assert phi.keys() == reference.keys()
    for name in reference:
        difference = (phi[name] - reference[name]).abs().max().item()
        assert torch.allclose(phi[name], reference[name], atol=ATOL), (name, difference)


def assert_every_round_logged_once(tracking_uri: str, run_id: str, rounds: int) -> None:
    """The run holds exactly one `meta_loss_after` per round: none lost, none logged twice."""
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "meta_loss_after")
    assert sorted(m.step for m in history) == list(range(1, rounds + 1))
