"""`reptile train job.yaml`: the same job without a server, logged to the same MLflow store."""

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient
from safetensors.torch import load_file


def _reptile(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REPTILE_DATA_DIR": str(data_dir), "REPTILE_RAY_NUM_CPUS": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    reptile = str(Path(sys.executable).with_name("reptile"))
    return subprocess.run([reptile, *args], env=env, capture_output=True, text=True, timeout=600)


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
    assert len(client.get_metric_history(run.info.run_id, "meta_loss_after")) == 12


def test_train_rejects_a_bad_job_file(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text('{"rounds": 10, "inner_stepz": 3}')
    result = _reptile("train", str(job), data_dir=tmp_path)
    assert result.returncode == 2
    assert "inner_stepz" in result.stderr and "Extra inputs are not permitted" in result.stderr
