"""Actors that die or hang mid-job, for real (SIGKILL, SIGSTOP), against a running server."""

import os
import signal
import threading
import time
from typing import Any

import psutil
import pytest

from tests.faults.conftest import CHUNK_RETRIES, ROUND_TIMEOUT_S, START_TIMEOUT_S
from tests.utils.net import wait_until
from tests.utils.processes import actor_pids, signal_all
from tests.utils.reference import assert_every_round_logged_once, assert_same_phi, serial_phi
from tests.utils.server import Server, succeeded, wait_for_round, wait_for_state

pytestmark = pytest.mark.faults

# split rounds: every actor works every round, so the one hit is the one retried (whole rounds
# in one actor, retried the same way: tests/integration/test_pool.py)
BODY: dict[str, Any] = {"rounds": 300, "meta_batch_size": 4, "eval_every": 0}
BODY |= {"checkpoint_every": 50, "execution": "split"}


def _finish_and_check(server: Server, job_id: str, body: dict[str, Any]) -> None:
    """The job succeeds with the fault-free φ and every round's metrics in MLflow."""
    done, phi = succeeded(server, job_id)
    assert_same_phi(phi, serial_phi(body))
    assert_every_round_logged_once(server.tracking_uri, done["mlflow"]["run_id"], body["rounds"])


def test_an_actor_killed_mid_job_costs_nothing(server: Server) -> None:
    body = {**BODY, "seed": 31}
    with server.client() as client:
        job = client.post("/v1/jobs", json=body).json()
        wait_for_round(client, job["id"], 20)
        victim = actor_pids(server)[0]
        os.kill(victim, signal.SIGKILL)
    _finish_and_check(server, job["id"], body)
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"
    assert "retrying on a fresh actor" in server.log()


def test_a_hung_actor_is_timed_out_and_its_chunk_rerun(server: Server) -> None:
    body = {**BODY, "seed": 32}
    with server.client() as client:
        job = client.post("/v1/jobs", json=body).json()
        wait_for_round(client, job["id"], 20)
        frozen = actor_pids(server)[0]
        os.kill(frozen, signal.SIGSTOP)  # alive, holding its chunk, never answering
        started = time.monotonic()
        try:
            _finish_and_check(server, job["id"], body)
        finally:
            signal_all([frozen], signal.SIGCONT)
    assert time.monotonic() - started >= ROUND_TIMEOUT_S  # waited out the deadline once
    wait_until(lambda: frozen not in actor_pids(server), 60, "the hung actor to be killed")


def test_a_job_whose_actors_all_hang_fails_after_bounded_retries(server: Server) -> None:
    stop = threading.Event()

    def freeze_every_actor() -> None:
        while not stop.is_set():
            signal_all(actor_pids(server), signal.SIGSTOP)
            time.sleep(0.1)

    freezer = threading.Thread(target=freeze_every_actor)
    with server.client() as client:
        job = client.post("/v1/jobs", json={**BODY, "seed": 33}).json()
        wait_for_round(client, job["id"], 5)
        freezer.start()
        try:
            tries = (CHUNK_RETRIES + 1) * (START_TIMEOUT_S + ROUND_TIMEOUT_S)
            failed = wait_for_state(client, job["id"], {"failed", "succeeded"}, timeout=120 + tries)
        finally:
            stop.set()
            freezer.join()
            signal_all(actor_pids(server), signal.SIGCONT)
        assert failed["state"] == "failed", failed
        assert f"failed {CHUNK_RETRIES + 1} times" in failed["error"]
        assert failed["round"] < BODY["rounds"]
        # φ of the last completed round is still served, and the server takes new jobs
        assert client.get(f"/v1/jobs/{job['id']}/weights").status_code == 200
    wait_until(lambda: not actor_pids(server), 60, "the hung actors to be killed")
    with server.client() as client:  # the server still trains
        body = {**BODY, "seed": 34}
        job = client.post("/v1/jobs", json=body).json()
    _finish_and_check(server, job["id"], body)
