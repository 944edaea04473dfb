"""The controller killed outright, its checkpoint corrupted, its disk filled: nothing is lost."""

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from service.weights import read_checkpoint
from tests.utils.processes import descendants, kill_all
from tests.utils.reference import assert_every_round_logged_once, assert_same_phi, serial_phi
from tests.utils.server import resume, start_server, succeeded, wait_for_round, wait_for_state

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("auto_resume", [True, False])
def test_a_sigkilled_controller_resumes_from_its_checkpoint(
    tmp_path: Path, auto_resume: bool
) -> None:
    """With auto-resume the restarted controller carries on by itself; without, the job reads
    failed with what to do, and `POST …/resume` carries on the same way."""
    body: dict[str, Any] = {"rounds": 400, "meta_batch_size": 4, "eval_every": 200, "eval_tasks": 4}
    body |= {"checkpoint_every": 20, "seed": 41, "execution": "split"}  # still running at 70
    first = start_server(tmp_path)
    try:
        with first.client() as client:
            job = client.post("/v1/jobs", json=body).json()
            seen = wait_for_round(client, job["id"], 70)
        left_behind = descendants(first)
        first.stop(signal.SIGKILL)  # no shutdown hook runs: the crash of a machine
    finally:
        first.stop()
        kill_all(left_behind)  # a crashed machine takes its Ray with it

    second = start_server(tmp_path, REPTILE_AUTO_RESUME=str(auto_resume).lower())
    try:
        with second.client() as client:
            found = client.get(f"/v1/jobs/{job['id']}").json()
            if not auto_resume:
                assert found["state"] == "failed", found
                assert "POST …/resume to continue" in found["error"]
                response = resume(client, job["id"])
                assert response.status_code == 202, response.text
                found = response.json()
            # resumed from a checkpoint at most one interval behind
            assert found["checkpoint_round"] >= seen["round"] - body["checkpoint_every"]
        done, phi = succeeded(second, job["id"])
    finally:
        second.stop()
    assert done["mlflow"]["run_id"] == seen["mlflow"]["run_id"]  # the same MLflow run
    assert_same_phi(phi, serial_phi(body))
    run_id = seen["mlflow"]["run_id"]
    assert_every_round_logged_once(second.tracking_uri, run_id, body["rounds"])
    evaluations = MlflowClient(second.tracking_uri).get_metric_history(run_id, "eval_mse_before")
    assert sorted(m.step for m in evaluations) == [0, 200, 400]


def test_a_corrupt_checkpoint_is_a_clear_error_on_resume(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        with server.client() as client:
            job = client.post("/v1/jobs", json={"rounds": 5000, "eval_every": 0}).json()
            wait_for_round(client, job["id"], 10)
            client.post(f"/v1/jobs/{job['id']}/cancel")
            cancelled = wait_for_state(client, job["id"], {"cancelled"})
            checkpoint = tmp_path / "jobs" / job["id"] / "checkpoint.safetensors"
            checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # torn by a bad disk
            response = client.post(f"/v1/jobs/{job['id']}/resume")
            assert response.status_code == 409, response.text
            assert "checkpoint" in response.json()["detail"]
            assert "unreadable" in response.json()["detail"]
            assert client.get(f"/v1/jobs/{job['id']}").json() == cancelled  # nothing changed
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs: a real file system that runs out of space."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def _fill(directory: Path) -> Path:
    """Write zeros into `directory` until its file system is full."""
    filler = directory / "filler"
    with filler.open("wb") as file:
        try:
            while True:
                file.write(bytes(1 << 20))
                file.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_fails_the_job_and_keeps_the_last_checkpoint(
    tmp_path: Path, small_disk: Path
) -> None:
    body = {"rounds": 600, "meta_batch_size": 4, "eval_every": 0, "checkpoint_every": 20}
    body |= {"seed": 42}
    data_dir, tracking_uri = small_disk / "data", f"sqlite:///{tmp_path / 'mlflow.db'}"
    server = start_server(data_dir, log_dir=tmp_path, REPTILE_MLFLOW_TRACKING_URI=tracking_uri)
    try:
        with server.client() as client:
            job = client.post("/v1/jobs", json=body).json()
            job_dir = data_dir / "jobs" / job["id"]
            record = wait_for_round(client, job["id"], 20)
            while record["checkpoint_round"] is None:
                record = wait_for_round(client, job["id"], record["round"] + 1)
            filler = _fill(small_disk)
            failed = wait_for_state(client, job["id"], {"failed", "succeeded"})
            assert failed["state"] == "failed", failed
            assert "No space left on device" in failed["error"]
            # the checkpoint on disk is whole, and no half-written file is left beside it
            checkpoint = read_checkpoint(job_dir / "checkpoint.safetensors")
            assert checkpoint.round >= record["checkpoint_round"]
            assert not list(job_dir.glob(".*.tmp"))

            filler.unlink()  # space again: the job resumes from that checkpoint
            assert resume(client, job["id"]).status_code == 202
        done, phi = succeeded(server, job["id"])
    finally:
        server.stop()
    assert_same_phi(phi, serial_phi(body))
    assert_every_round_logged_once(tracking_uri, done["mlflow"]["run_id"], body["rounds"])
