"""The `reptile` CLI: `train` without a server, and the client commands against a real one."""

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from safetensors.torch import load_file

from api.schemas import AdaptationPublic, JobPublic
from service.records import ClassPrediction, JobState
from tests.utils.images import learnable_omniglot_tree
from tests.utils.net import wait_until
from tests.utils.server import Server, start_server


def _environment(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "REPTILE_DATA_DIR": str(data_dir), "REPTILE_RAY_NUM_CPUS": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return env


REPTILE = str(Path(sys.executable).with_name("reptile"))


def _reptile(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REPTILE, *args], env=_environment(data_dir), capture_output=True, text=True, timeout=600
    )


def _reptile_process(*args: str, data_dir: Path, stderr: Path) -> subprocess.Popen[bytes]:
    """The command in the background, its standard error to a file (a pipe left unread would
    fill up with the progress bar and block it)."""
    with stderr.open("wb") as file:
        return subprocess.Popen(
            [REPTILE, *args], env=_environment(data_dir), stdout=subprocess.DEVNULL, stderr=file
        )


def test_train_runs_a_yaml_job_and_logs_it(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: cli-test\nrounds: 12\nmeta_batch_size: 4\neval_every: 6\neval_tasks: 4\n")
    result = _reptile(
        "train", str(job), "--output", str(tmp_path / "phi.safetensors"), data_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "12/12" in result.stderr  # the progress bar reached the end
    assert "meta-weights:" in result.stdout and "MLflow run:" in result.stdout
    assert "registered model: models:/reptile-sine/1" in result.stdout
    phi = load_file(tmp_path / "phi.safetensors")
    assert phi["0.weight"].shape == (64, 1)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reptile-sine")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "cli-test" and run.info.status == "FINISHED"
    assert run.data.tags["source"] == "cli"
    assert len(run.data.tags["ray_nodes"].split(",")) == 1  # the local Ray's one node
    assert len(client.get_metric_history(run.info.run_id, "meta_loss_after")) == 12


def test_train_rejects_a_bad_job_file(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text('{"rounds": 10, "inner_stepz": 3}')
    result = _reptile("train", str(job), data_dir=tmp_path)
    assert result.returncode == 2
    assert "inner_stepz" in result.stderr and "Extra inputs are not permitted" in result.stderr


def _only_run(data_dir: Path) -> Run:
    client = MlflowClient(f"sqlite:///{data_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reptile-sine")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_train_that_diverges_ends_its_run_failed(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(
        '{"rounds": 200, "inner_lr": 100, "outer_optimizer": "sgd", "outer_lr": 1.0, '
        '"eval_every": 0, "num_workers": 1}'
    )
    result = _reptile("train", str(job), data_dir=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Divergence" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert _only_run(tmp_path).info.status == "FAILED"


def test_train_interrupted_by_ctrl_c_ends_its_run_killed(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("rounds: 1000000\neval_every: 0\nnum_workers: 1\ncheckpoint_every: 1000\n")
    log = tmp_path / "stderr.txt"
    process = _reptile_process("train", str(job), data_dir=tmp_path, stderr=log)
    try:
        trained = re.compile(r"\b[1-9][0-9]*/1000000\b")  # the progress bar, past round 0
        wait_until(lambda: bool(trained.search(log.read_text())), 300, "the job to train")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        process.kill()
    stderr = log.read_text()
    assert process.returncode == 130, stderr
    assert "error: interrupted at round" in stderr and "Traceback" not in stderr
    run = _only_run(tmp_path)
    assert run.info.status == "KILLED"
    assert "weights/phi.safetensors" in {
        a.path
        for a in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(
            run.info.run_id, "weights"
        )
    }


# --- client commands against a real server -------------------------------------------------

SINE_JOB = (
    "name: cli-jobs\nrounds: 12\nmeta_batch_size: 4\neval_every: 6\neval_tasks: 4\nnum_workers: 1\n"
)
IMAGE_JOB = {
    "task": "omniglot",
    "data": "omniglot",
    "ways": 3,
    "shots": 2,
    "queries": 2,
    "eval_shots": [1],
    "held_out": ["Alphabet3"],
    "rounds": 2,
    "meta_batch_size": 2,
    "inner_batch_size": 6,
    "eval_every": 0,
    "eval_tasks": 2,
    "eval_steps": 2,
    "final_eval_tasks": 2,
    "num_workers": 1,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose data root holds a small Omniglot-layout tree, for image jobs."""
    root = Path(tmp_path_factory.mktemp("cli"))
    learnable_omniglot_tree(root / "data" / "omniglot")
    running = start_server(root / "service", REPTILE_DATA_ROOT=str(root / "data"))
    yield running
    running.stop()


def _client_cli(
    server: Server, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A client command (`reptile jobs …`, `reptile adapt …`) run against `server`."""
    env = {**os.environ, "REPTILE_URL": server.url}
    env.pop("REPTILE_API_TOKEN", None)
    reptile = str(Path(sys.executable).with_name("reptile"))
    return subprocess.run(
        [reptile, *args], env=env, input=stdin, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def sine_job(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """A sine job submitted with `reptile jobs submit job.yaml --wait`: its id and the run."""
    job = Path(tmp_path_factory.mktemp("jobs")) / "job.yaml"
    job.write_text(SINE_JOB)
    result = _client_cli(server, "jobs", "submit", str(job), "--wait")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0], result


def test_submit_wait_follows_the_job_to_its_end(
    sine_job: tuple[str, subprocess.CompletedProcess[str]],
) -> None:
    job_id, result = sine_job
    lines = result.stdout.splitlines()
    assert len(job_id) == 32
    assert any(line.startswith("round 12/12  meta_loss_before=") for line in lines), lines
    assert any(line.startswith("evaluation  eval_mse_before=") for line in lines), lines
    assert lines[-1] == f"job {job_id} succeeded"


def test_list_show_logs_and_weights_of_a_finished_job(
    server: Server, sine_job: tuple[str, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    job_id, _ = sine_job
    listed = _client_cli(server, "jobs", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "TASK", "STATE", "ROUND", "META", "LOSS", "CREATED"]
    row = next(r for r in rows if r.startswith(job_id)).split()
    assert row[1:5] == ["cli-jobs", "sine", "succeeded", "12/12"]

    shown = _client_cli(server, "jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(maxsplit=1) for line in shown.stdout.splitlines())
    assert fields["state"] == "succeeded" and fields["round"] == "12/12"
    assert "#/experiments/" in fields["mlflow"] and "eval_mse_after_32" in fields
    as_json = _client_cli(server, "jobs", "show", job_id, "--json")
    record = JobPublic.model_validate_json(as_json.stdout)
    assert record.id == job_id and record.state == JobState.succeeded

    logs = _client_cli(server, "jobs", "logs", job_id)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines()[-1] == f"job {job_id} succeeded"

    out = tmp_path / "phi.safetensors"
    weights = _client_cli(server, "jobs", "weights", job_id, "--out", str(out))
    assert weights.returncode == 0, weights.stderr
    assert load_file(out)["0.weight"].shape == (64, 1)


def test_adapt_a_sine_job_to_points(
    server: Server, sine_job: tuple[str, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    job_id, _ = sine_job
    out = tmp_path / "adapted.safetensors"
    result = _client_cli(
        server,
        "adapt",
        job_id,
        "--support-x",
        "-4,-2,0,1,3",
        "--support-y",
        "1.2,-0.8,0.3,1.1,-0.4",
        "--query-x",
        "-1,0.5,2",
        "--steps",
        "8",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    first, header, *rows, saved = result.stdout.splitlines()
    assert first.startswith("adaptation ") and f"of job {job_id} at round 12 (8 steps" in first
    assert header.split() == ["X", "PREDICTION"]
    assert [row.split()[0] for row in rows] == ["-1", "0.5", "2"]
    assert saved == f"adapted weights: {out}"
    assert load_file(out)["0.weight"].shape == (64, 1)


def test_adapt_an_image_job_to_labelled_images(server: Server, tmp_path: Path) -> None:
    job = tmp_path / "image-job.json"
    job.write_text(json.dumps(IMAGE_JOB))
    submitted = _client_cli(server, "jobs", "submit", str(job), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0]

    characters = server.data_dir.parent / "data" / "omniglot" / "Alphabet3"
    support = [
        f"{characters / f'character{c:02d}' / f'{c:02d}_01.png'}={label}"
        for c, label in ((1, "a"), (2, "b"), (3, "c"))
    ]
    support_args = [arg for item in support for arg in ("--support", item)]
    query = characters / "character02" / "02_02.png"
    result = _client_cli(
        server,
        "adapt",
        job_id,
        *support_args,
        "--query",
        str(query),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    record = AdaptationPublic.model_validate_json(result.stdout)
    (prediction,) = record.predictions
    assert isinstance(prediction, ClassPrediction)
    assert set(prediction.probabilities) == {"a", "b", "c"}

    table = _client_cli(
        server,
        "adapt",
        job_id,
        *support_args,
        "--query",
        str(query),
        "--steps",
        "0",
    )
    assert table.returncode == 0, table.stderr
    _, header, row = table.stdout.splitlines()
    assert header.split() == ["QUERY", "LABEL", "PROBABILITY"]
    assert row.split()[0] == str(query) and row.split()[1] in {"a", "b", "c"}

    one_class = _client_cli(
        server, "adapt", job_id, *("--support", support[1]), "--query", str(query)
    )
    assert one_class.returncode == 1
    assert one_class.stderr == (
        "error: HTTP 422: a support set needs 2 to 50 distinct labels (classes); it has 1: ['b']\n"
    )


def test_submit_from_stdin_then_cancel(server: Server) -> None:
    submitted = _client_cli(server, "jobs", "submit", "-", stdin='{"rounds": 100000}')
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    cancelled = _client_cli(server, "jobs", "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"job {job_id}: cancel requested")
    logs = _client_cli(server, "jobs", "logs", job_id)
    assert logs.returncode == 1
    assert logs.stdout.splitlines()[-1] == f"job {job_id} cancelled"


def test_client_commands_say_what_is_wrong(server: Server, tmp_path: Path) -> None:
    missing = _client_cli(server, "jobs", "show", "nope")
    assert missing.returncode == 1 and missing.stderr == "error: HTTP 404: no job 'nope'\n"

    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 10\ninner_stepz: 3\n")
    invalid = _client_cli(server, "jobs", "submit", str(bad))
    assert invalid.returncode == 1
    assert "inner_stepz: Extra inputs are not permitted" in invalid.stderr

    not_a_mapping = _client_cli(server, "jobs", "submit", "-", stdin="[1, 2]")
    assert not_a_mapping.returncode == 2 and "mapping of job fields" in not_a_mapping.stderr

    neither = _client_cli(server, "adapt", "some-job", "--support-x", "1,2")
    assert neither.returncode == 2 and "--support-y" in neither.stderr

    offline = _client_cli(server, "jobs", "list", "--url", "http://127.0.0.1:1")
    assert offline.returncode == 1
    assert offline.stderr.startswith("error: cannot reach the service at http://127.0.0.1:1")
