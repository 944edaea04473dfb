"""A real server, real local Ray and a real MLflow store: the user's path through the API."""

import math
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient
from safetensors.torch import load
from torch.func import functional_call

from reptile.tasks import make_family
from service.specs import SineJobSpec
from tests.utils.reference import assert_same_phi, serial_phi
from tests.utils.server import Server, events, resume, wait_for_round, wait_for_state

SMALL = {
    "rounds": 30,
    "meta_batch_size": 6,
    "eval_every": 10,
    "checkpoint_every": 10,
    "eval_tasks": 8,
    "num_workers": 2,
    "seed": 5,
}


def _sine_points(
    n: int, amplitude: float = 2.0, phase: float = 0.7
) -> tuple[list[float], list[float]]:
    xs = [-5 + 10 * i / (n - 1) for i in range(n)]
    return xs, [amplitude * math.sin(x + phase) for x in xs]


def test_a_job_runs_end_to_end_and_lands_in_mlflow(server: Server) -> None:
    with server.client() as client:
        response = client.post("/v1/jobs", json=SMALL)
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["state"] == "queued" and job["rounds"] == 30 and job["spec"]["task"] == "sine"

        seen = list(events(client, f"/v1/jobs/{job['id']}/events"))
        assert seen[-1] == ("end", {"id": job["id"], "state": "succeeded"})
        rounds = [data["round"] for event, data in seen if event == "progress"]
        assert rounds == sorted(rounds) and rounds[-1] == 30

        record = client.get(f"/v1/jobs/{job['id']}").json()
        assert record["state"] == "succeeded" and record["round"] == 30 and record["error"] is None
        assert {
            "meta_loss_before",
            "meta_loss_after",
            "epsilon",
            "tasks_per_s",
            "round_seconds",
        } <= record["metrics"].keys()
        assert record["evaluation"]["eval_mse_after_32"] < record["evaluation"]["eval_mse_before"]
        mlflow = record["mlflow"]
        assert mlflow["status"] == "ok" and mlflow["run_id"]
        assert mlflow["ui_url"].endswith(
            f"#/experiments/{mlflow['experiment_id']}/runs/{mlflow['run_id']}"
            "?workflowType=machine_learning"
        )

        weights = client.get(f"/v1/jobs/{job['id']}/weights")
        assert weights.status_code == 200
        phi = load(weights.content)

    # the distributed job reaches the serial reference's φ for the same seed
    assert_same_phi(phi, serial_phi(SMALL))

    client_ml = MlflowClient(server.tracking_uri)
    run = client_ml.get_run(mlflow["run_id"])
    assert run.info.status == "FINISHED"
    assert client_ml.get_experiment(run.info.experiment_id).name == "reptile-sine"
    assert run.data.params["meta_batch_size"] == "6" and run.data.params["inner_lr"] == "0.02"
    assert set(SineJobSpec.model_fields) == set(run.data.params)
    for metric in (
        "meta_loss_before",
        "meta_loss_after",
        "epsilon",
        "tasks_per_s",
        "round_seconds",
    ):
        assert len(client_ml.get_metric_history(run.info.run_id, metric)) == 30, metric
    evals = client_ml.get_metric_history(run.info.run_id, "eval_mse_after_32")
    assert [m.step for m in evals] == [0, 10, 20, 30]
    for k in (1, 5):
        assert len(client_ml.get_metric_history(run.info.run_id, f"eval_mse_after_{k}")) == 4
    artifacts = {
        a.path
        for d in ("plots", "weights", "checkpoints")
        for a in client_ml.list_artifacts(run.info.run_id, d)
    }
    assert artifacts == {
        "plots/sine_fit.png",
        "plots/learning_curve.png",
        "weights/phi.safetensors",
        "checkpoints/checkpoint.safetensors",
    }
    logged_path = client_ml.download_artifacts(run.info.run_id, "weights/phi.safetensors")
    logged = load(Path(logged_path).read_bytes())
    assert all(torch.equal(logged[n], phi[n]) for n in phi)


def _finished_job(client: Any) -> str:
    jobs = [j for j in client.get("/v1/jobs").json()["data"] if j["state"] == "succeeded"]
    if jobs:
        return str(jobs[0]["id"])
    job = client.post("/v1/jobs", json=SMALL).json()
    wait_for_state(client, job["id"], {"succeeded"})
    return str(job["id"])


def test_adapting_to_a_new_task_returns_weights_and_predictions(server: Server) -> None:
    with server.client() as client:
        job_id = _finished_job(client)
        xs, ys = _sine_points(10)
        query = [-4.0, -1.0, 0.0, 2.5]
        response = client.post(
            f"/v1/jobs/{job_id}/adaptations",
            json={"support": {"x": xs, "y": ys}, "query": {"x": query}, "steps": 32, "lr": 0.02},
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert response.headers["location"] == f"/v1/adaptations/{created['id']}"
        fetched = client.get(response.headers["location"]).json()
        assert fetched == created
        assert fetched["job_id"] == job_id and fetched["steps"] == 32 and fetched["round"] == 30
        assert fetched["support_loss"]["after"] < 0.5 * fetched["support_loss"]["before"]
        assert len(fetched["predictions"]) == len(query)

        weights = load(client.get(f"/v1/adaptations/{created['id']}/weights").content)
        model = make_family("sine").make_model()
        local = functional_call(model, weights, (torch.tensor(query).unsqueeze(1),)).squeeze(1)
        assert torch.allclose(local, torch.tensor(fetched["predictions"]), atol=1e-5)

        as_json = client.get(f"/v1/adaptations/{created['id']}/weights", params={"format": "json"})
        assert as_json.status_code == 200
        tensors = as_json.json()["tensors"]
        assert tensors["0.weight"]["shape"] == [64, 1]
        assert torch.allclose(torch.tensor(tensors["4.bias"]["values"]), weights["4.bias"])

        defaults = client.post(
            f"/v1/jobs/{job_id}/adaptations",
            json={"support": {"x": xs, "y": ys}, "query": {"x": [0.0]}},
        ).json()
        assert (
            defaults["steps"] == 32 and defaults["lr"] == 0.02
        )  # the job's eval_steps and inner_lr


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(server: Server) -> None:
    with server.client() as client:
        job_id = _finished_job(client)
        before = client.get("/v1/jobs").json()["count"]
        bad_jobs = [
            ({"task": "imagenet"}, 422, "does not match any of the expected tags: 'sine'"),
            ({"inner_stepz": 5}, 422, "Extra inputs are not permitted"),
            ({"inner_steps": -3}, 422, "greater than or equal to 1"),
            ({"meta_batch_size": 0}, 422, "greater than or equal to 1"),
            ({"inner_optimizer": "rmsprop"}, 422, "'sgd' or 'adam'"),
            ({"num_workers": 64}, 422, "needs 64 CPUs; the Ray cluster has 4"),
            ({"gpus_per_worker": 1}, 422, "needs 2 GPUs; the Ray cluster has 0"),
            ({"shots": 4, "inner_batch_size": 8}, 422, "cannot exceed the 4 examples"),
        ]
        for body, status, message in bad_jobs:
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == status, (body, response.text)
            assert message in response.text, (body, response.text)
        response = client.post(
            "/v1/jobs", content=b'{"inner_lr": NaN}', headers={"content-type": "application/json"}
        )
        assert response.status_code == 422 and "finite" in response.text
        response = client.post(
            "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 422

        xs, ys = _sine_points(5)
        path = f"/v1/jobs/{job_id}/adaptations"
        bad_adaptations = [
            ({"support": {"x": [], "y": []}, "query": {"x": [0.0]}}, "at least 1 item"),
            (
                {"support": {"x": xs, "y": ys[:3]}, "query": {"x": [0.0]}},
                "support.x has 5 points but support.y has 3",
            ),
            (
                {"support": {"x": xs, "y": ys}, "query": {"x": [0.0]}, "steps": -1},
                "greater than or equal to 0",
            ),
            ({"support": {"x": xs, "y": ys}, "query": {"x": [0.0]}, "lr": 0}, "greater than 0"),
            (
                {"support": {"x": [0.0] * 1001, "y": [0.0] * 1001}, "query": {"x": [0.0]}},
                "at most 1000 items",
            ),
            ({"support": {"x": xs, "y": ys}}, "Field required"),
            ({"support": {"x": xs, "y": ys}, "query": {"x": ["a"]}}, "valid number"),
        ]
        for body, message in bad_adaptations:
            response = client.post(path, json=body)
            assert response.status_code == 422, (body, response.text)
            assert message in response.text, (body, response.text)
        response = client.post(
            path,
            content=b'{"support": {"x": [1, Infinity], "y": [0, 1]}, "query": {"x": [0]}}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422 and "finite" in response.text

        unknown = "0" * 32
        for method, url in [
            ("GET", f"/v1/jobs/{unknown}"),
            ("GET", "/v1/jobs/../../etc/passwd"),
            ("POST", f"/v1/jobs/{unknown}/cancel"),
            ("GET", f"/v1/jobs/{unknown}/weights"),
            ("GET", f"/v1/adaptations/{unknown}"),
            ("GET", "/v1/adaptations/nope/weights"),
            ("GET", f"/v1/jobs/{unknown}/events"),
        ]:
            response = client.request(method, url)
            assert response.status_code == 404, (url, response.text)
        response = client.post(
            f"/v1/jobs/{unknown}/adaptations",
            json={"support": {"x": xs, "y": ys}, "query": {"x": [0.0]}},
        )
        assert response.status_code == 404 and "no job" in response.text
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
        assert client.post(f"/v1/jobs/{job_id}/resume").status_code == 409
        assert client.get(f"/v1/jobs/{job_id}/weights", params={"format": "xml"}).status_code == 422

        assert client.get("/v1/jobs").json()["count"] == before
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"


def test_cancel_stops_within_a_round_and_keeps_what_was_learnt(server: Server) -> None:
    with server.client() as client:
        job = client.post(
            "/v1/jobs",
            json={
                "rounds": 100_000,
                "meta_batch_size": 4,
                "eval_every": 0,
                "checkpoint_every": 1000,
            },
        ).json()
        record = wait_for_state(client, job["id"], {"running"})
        for _, data in events(client, f"/v1/jobs/{job['id']}/events"):
            if data.get("round", 0) >= 5:
                break
        xs, ys = _sine_points(10)
        adaptation = client.post(
            f"/v1/jobs/{job['id']}/adaptations",
            json={"support": {"x": xs, "y": ys}, "query": {"x": [0.0]}},
        )
        assert adaptation.status_code == 201, adaptation.text  # from the running job's latest φ
        assert adaptation.json()["round"] >= 5
        running_weights = client.get(f"/v1/jobs/{job['id']}/weights")
        assert running_weights.status_code == 200

        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        record = wait_for_state(client, job["id"], {"cancelled"}, timeout=60)
        assert 5 <= record["round"] < 100_000
        assert record["checkpoint_round"] == record["round"]
        final = client.get(f"/v1/jobs/{job['id']}/weights", params={"format": "json"}).json()
        assert final["round"] == record["round"]
        run = MlflowClient(server.tracking_uri).get_run(record["mlflow"]["run_id"])
        assert run.info.status == "KILLED"
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_a_job_cancelled_while_its_workers_wait_for_cpus_stops_at_once(server: Server) -> None:
    """Its actor cannot start while another job holds every CPU of the server's Ray; the
    cancel must not wait for that job (nor for the start deadline, 300 s)."""
    long = {"rounds": 100_000, "meta_batch_size": 4, "eval_every": 0, "checkpoint_every": 1000}
    with server.client() as client:
        hog = client.post("/v1/jobs", json={**long, "num_workers": 4}).json()
        wait_for_round(client, hog["id"], 1)
        waiting = client.post("/v1/jobs", json={**long, "num_workers": 1}).json()
        wait_for_state(client, waiting["id"], {"running"})
        assert client.post(f"/v1/jobs/{waiting['id']}/cancel").status_code == 202
        record = wait_for_state(client, waiting["id"], {"cancelled"}, timeout=60)
        assert record["round"] == 0
        assert client.get(f"/v1/jobs/{hog['id']}").json()["state"] == "running"
        assert client.post(f"/v1/jobs/{hog['id']}/cancel").status_code == 202
        wait_for_state(client, hog["id"], {"cancelled"}, timeout=60)


def test_a_diverging_job_fails_with_the_reason(server: Server) -> None:
    with server.client() as client:
        job = client.post(
            "/v1/jobs", json={"rounds": 50, "inner_lr": 100.0, "eval_every": 0}
        ).json()
        record = wait_for_state(client, job["id"], {"failed", "succeeded"})
        assert record["state"] == "failed", record
        assert "non-finite" in record["error"]
        assert client.get(f"/v1/jobs/{job['id']}/weights").status_code in (200, 409)


def test_a_cancelled_job_resumes_to_the_uninterrupted_result(server: Server) -> None:
    body = {
        "rounds": 150,
        "meta_batch_size": 4,
        "eval_every": 0,
        "checkpoint_every": 50,
        "seed": 21,
    }
    with server.client() as client:
        job = client.post("/v1/jobs", json=body).json()
        for _, data in events(client, f"/v1/jobs/{job['id']}/events"):
            if data.get("round", 0) >= 10:
                break
        client.post(f"/v1/jobs/{job['id']}/cancel")
        cancelled = wait_for_state(client, job["id"], {"cancelled"}, timeout=60)
        assert cancelled["round"] < 150
        response = resume(client, job["id"])
        assert response.status_code == 202, response.text
        done = wait_for_state(client, job["id"], {"succeeded", "failed"})
        assert (
            done["state"] == "succeeded"
            and done["mlflow"]["run_id"] == cancelled["mlflow"]["run_id"]
        )
        phi = load(client.get(f"/v1/jobs/{job['id']}/weights").content)
    assert_same_phi(phi, serial_phi(body))
    run = MlflowClient(server.tracking_uri).get_run(done["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
