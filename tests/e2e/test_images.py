"""Few-shot image jobs through the real server: data checks, training, image adaptations."""

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.utils.images import image_folder_tree, learnable_omniglot_tree
from tests.utils.server import Server, start_server, wait_for_state

TINY = {
    "task": "omniglot",
    "ways": 3,
    "shots": 2,
    "queries": 2,
    "eval_shots": [1, 2],
    "held_out": ["Alphabet3"],
    "rounds": 30,
    "meta_batch_size": 2,
    "inner_batch_size": 6,
    "eval_every": 15,
    "eval_tasks": 10,
    "eval_steps": 20,
    "final_eval_tasks": 10,
    "checkpoint_every": 15,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = Path(tmp_path_factory.mktemp("images"))
    learnable_omniglot_tree(root / "data" / "omniglot")
    image_folder_tree(root / "data" / "folders", images_per_class=4)
    running = start_server(root / "service", REPTILE_DATA_ROOT=str(root / "data"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def trained(server: Server) -> dict[str, object]:
    with server.client() as client:
        response = client.post("/v1/jobs", json={**TINY, "data": "omniglot"})
        assert response.status_code == 202, response.text
        record = wait_for_state(client, response.json()["id"], {"succeeded", "failed"})
    assert record["state"] == "succeeded", record
    return record


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _character(server: Server, alphabet: int, character: int, drawing: int) -> bytes:
    root = server.data_dir.parent / "data" / "omniglot"
    return _png(
        root
        / f"Alphabet{alphabet}"
        / f"character{character:02d}"
        / f"{character:02d}_{drawing:02d}.png"
    )


def test_bad_data_is_a_clear_4xx_at_submission(server: Server) -> None:
    data_root = server.data_dir.parent / "data"
    (data_root / "empty").mkdir(exist_ok=True)
    escape = data_root / "escape"
    if not escape.is_symlink():  # a link inside the root to a tree outside it
        escape.symlink_to(data_root.parent / "outside", target_is_directory=True)
    learnable_omniglot_tree(data_root.parent / "outside")
    cases = [
        ({"task": "omniglot", "data": "missing"}, "does not exist"),
        ({"task": "omniglot", "data": "empty"}, "no Omniglot images"),
        ({"task": "omniglot", "data": "/etc"}, "outside the data root"),
        ({"task": "omniglot", "data": "../outside"}, "outside the data root"),
        ({"task": "omniglot", "data": "omniglot/../../outside"}, "outside the data root"),
        ({"task": "omniglot", "data": str(data_root / ".." / "outside")}, "outside the data root"),
        ({"task": "omniglot", "data": "escape"}, "outside the data root"),
        ({"task": "omniglot", "data": "~"}, "outside the data root"),
        ({"task": "omniglot", "data": "~no-such-user"}, "Could not determine home directory"),
        ({"task": "omniglot", "data": "0" * 300}, "cannot be read: File name too long"),
        ({"task": "omniglot", "data": "a\x00b"}, "String should match pattern"),
        ({"task": "omniglot", "data": "omniglot"}, "has 6 images in"),  # 10 shots by default
        ({**TINY, "data": "omniglot", "held_out": None}, "held_out names groups"),  # defaults
        ({**TINY, "data": "omniglot", "ways": 10}, "10-way tasks need 10 classes"),
        (
            {
                "task": "image_folder",
                "data": "folders",
                "ways": 5,
                "shots": 1,
                "queries": 1,
                "eval_shots": [1],
                "inner_batch_size": 5,
            },
            "5-way tasks need 5 classes",
        ),
    ]
    with server.client() as client:
        before = client.get("/v1/jobs").json()["count"]
        for body, message in cases:
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 422, (body, response.text)
            assert message in response.text, (body, response.text)
        assert client.get("/v1/jobs").json()["count"] == before


def test_an_omniglot_job_learns_and_logs_accuracy(
    server: Server, trained: dict[str, object]
) -> None:
    evaluation = trained["evaluation"]
    assert isinstance(evaluation, dict)
    assert {
        "eval_acc_3w1s",
        "eval_acc_3w1s_ci95",
        "eval_acc_3w2s",
        "eval_acc_3w2s_ci95",
    } <= evaluation.keys()
    assert evaluation["eval_acc_3w2s"] > 0.5  # chance is 1/3
    mlflow = trained["mlflow"]
    assert isinstance(mlflow, dict)
    client = MlflowClient(server.tracking_uri)
    steps = [m.step for m in client.get_metric_history(mlflow["run_id"], "eval_acc_3w1s")]
    assert steps == [0, 15, 30]
    plots = {a.path for a in client.list_artifacts(mlflow["run_id"], "plots")}
    assert plots == {"plots/predictions.png", "plots/learning_curve.png"}
    assert (
        client.get_experiment(client.get_run(mlflow["run_id"]).info.experiment_id).name
        == "reptile-omniglot"
    )


def test_image_adaptation_json_and_multipart(server: Server, trained: dict[str, object]) -> None:
    job_id = trained["id"]
    support = [_character(server, 3, c, 1) for c in (1, 2, 3)]
    query = [_character(server, 3, c, 5) for c in (3, 1, 2)]
    encode = lambda images: [base64.b64encode(i).decode() for i in images]  # noqa: E731
    with server.client() as client:
        response = client.post(
            f"/v1/jobs/{job_id}/adaptations",
            json={
                "support": {"images": encode(support), "labels": ["alpha", "beta", "gamma"]},
                "query": {"images": encode(query)},
                "steps": 30,
            },
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["support_loss"]["after"] < created["support_loss"]["before"]
        assert [p["label"] for p in created["predictions"]] == ["gamma", "alpha", "beta"]
        for prediction in created["predictions"]:
            assert set(prediction["probabilities"]) == {"alpha", "beta", "gamma"}
            assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-5
        assert client.get(response.headers["location"]).json() == created
        weights = client.get(f"/v1/adaptations/{created['id']}/weights")
        assert weights.status_code == 200 and len(weights.content) > 100_000

        files = [("support", (f"s{i}.png", data, "image/png")) for i, data in enumerate(support)]
        files += [("query", (f"q{i}.png", data, "image/png")) for i, data in enumerate(query)]
        form = {"labels": ["alpha", "beta", "gamma"], "steps": "30"}
        response = client.post(f"/v1/jobs/{job_id}/adaptations", files=files, data=form)
        assert response.status_code == 201, response.text
        assert [p["label"] for p in response.json()["predictions"]] == ["gamma", "alpha", "beta"]

        # the job's registered model, adapted through the same multipart form
        model = {**form, "model": "models:/reptile-omniglot@latest"}
        from_model = client.post("/v1/adaptations", files=files, data=model)
        assert from_model.status_code == 201, from_model.text
        mlflow = trained["mlflow"]
        assert isinstance(mlflow, dict) and from_model.json()["model"] == mlflow["model_uri"]
        assert from_model.json()["predictions"] == response.json()["predictions"]


def _rgb_jpeg(png: bytes) -> bytes:
    """A drawing as users may send it: the 105×105 original re-encoded as an RGB JPEG."""
    with Image.open(io.BytesIO(png)) as opened:
        assert opened.size == (105, 105) and opened.mode == "1"  # Lake's originals
        buffer = io.BytesIO()
        opened.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_a_3_way_model_adapts_to_5_way_tasks_of_105px_pngs_and_jpegs(
    server: Server, trained: dict[str, object]
) -> None:
    encode = lambda images: [base64.b64encode(i).decode() for i in images]  # noqa: E731
    labels = ["a", "b", "c", "d", "e"]
    support = [_character(server, 3, c, 1) for c in range(1, 6)]
    query = [_character(server, 3, c, 4) for c in (5, 4, 3, 2, 1)]
    mlflow = trained["mlflow"]
    assert isinstance(mlflow, dict)
    with server.client() as client:
        answers = []
        for images in (support, [_rgb_jpeg(png) for png in support]):
            for path, extra in (
                (f"/v1/jobs/{trained['id']}/adaptations", {}),
                ("/v1/adaptations", {"model": mlflow["model_uri"]}),
            ):
                body = {
                    "support": {"images": encode(images), "labels": labels},
                    "query": {"images": encode(query)},
                    "steps": 30,
                    **extra,
                }
                response = client.post(path, json=body)
                assert response.status_code == 201, response.text
                created = response.json()
                assert created["support_loss"]["after"] < created["support_loss"]["before"]
                assert all(set(p["probabilities"]) == set(labels) for p in created["predictions"])
                answers.append([p["label"] for p in created["predictions"]])
    assert answers[0] == answers[1]  # the job's φ and its registered model: one adaptation
    for labelled in answers:  # drawings of the held-out alphabet, never trained on
        assert sum(a == b for a, b in zip(labelled, "edcba", strict=True)) >= 3, answers


def test_bad_image_adaptations_get_a_4xx(server: Server, trained: dict[str, object]) -> None:
    job_id = trained["id"]
    good = [base64.b64encode(_character(server, 3, c, 1)).decode() for c in (1, 2, 3)]
    tiny = io.BytesIO()
    Image.new("L", (3, 3)).save(tiny, format="PNG")
    cases = [
        ({"support": {"images": good, "labels": ["a", "b"]}}, "3 support images but 2 labels"),
        (
            {"support": {"images": good[:1], "labels": ["a"]}},
            "a support set needs 2 to 50 distinct labels (classes); it has 1",
        ),
        (
            {
                "support": {
                    "images": [base64.b64encode(b"not an image").decode(), *good[1:]],
                    "labels": ["a", "b", "c"],
                }
            },
            "cannot read image support[0]",
        ),
        (
            {
                "support": {
                    "images": [base64.b64encode(tiny.getvalue()).decode(), *good[1:]],
                    "labels": ["a", "b", "c"],
                }
            },
            "sides must be 8–4096 px",
        ),
        ({"support": {"images": ["%%%"], "labels": ["a"]}}, "base64"),
        ({"support": {"images": good * 200, "labels": ["a", "b", "c"] * 200}}, "at most 500 items"),
        (
            {"support": {"x": [1.0], "y": [2.0]}, "query": {"x": [0.0]}},
            "Extra inputs are not permitted",
        ),
    ]
    with server.client() as client:
        for body, message in cases:
            response = client.post(f"/v1/jobs/{job_id}/adaptations", json=body)
            assert response.status_code == 422, (message, response.text[:300])
            assert message in response.text, (message, response.text[:500])


def test_a_model_is_evaluated_on_any_ways_and_shots_as_a_resource(
    server: Server, trained: dict[str, object]
) -> None:
    mlflow = trained["mlflow"]
    assert isinstance(mlflow, dict)
    body = {"ways": [3, 5], "shots": [1, 2], "tasks": 20, "steps": 10}
    with server.client() as client:
        response = client.post(f"/v1/jobs/{trained['id']}/evaluations", json=body)
        assert response.status_code == 202, response.text
        assert response.json()["state"] == "queued"
        location = response.headers["location"]
        done = wait_for_state(
            client, location.rsplit("/", 1)[1], {"succeeded", "failed"}, resource="evaluations"
        )
        assert done["state"] == "succeeded", done
        assert done["request"] == {**response.json()["request"], **body}
        results = {(r["ways"], r["shots"]): r for r in done["results"]}
        assert set(results) == {(3, 1), (3, 2), (5, 1), (5, 2)}
        for result in results.values():
            assert 0 <= result["accuracy"] <= 1 and result["ci95"] >= 0 and result["tasks"] == 20
        assert results[(3, 2)]["accuracy"] > 0.5  # chance is 1/3: the model learnt
        assert client.get("/v1/evaluations").json()["count"] >= 1

        # the registered model: the same φ scored on the same tasks
        model = {"model": mlflow["model_uri"], "ways": [5], "shots": [1], "tasks": 20, "steps": 10}
        response = client.post("/v1/evaluations", json=model)
        assert response.status_code == 202, response.text
        again = wait_for_state(
            client, response.json()["id"], {"succeeded", "failed"}, resource="evaluations"
        )
        assert again["state"] == "succeeded", again
        assert again["model"] == mlflow["model_uri"]
        assert again["results"][0]["accuracy"] == results[(5, 1)]["accuracy"]

    # each an MLflow run nested under the job's run, with a metric per setting
    tracking = MlflowClient(server.tracking_uri)
    for evaluation in (done, again):
        run = tracking.get_run(evaluation["mlflow"]["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == mlflow["run_id"]
        assert run.data.tags["evaluation_id"] == evaluation["id"]
        assert run.info.status == "FINISHED"
        for result in evaluation["results"]:
            name = f"eval_acc_{result['ways']}w{result['shots']}s"
            assert run.data.metrics[name] == pytest.approx(result["accuracy"])


def test_bad_evaluations_get_a_clear_4xx(server: Server, trained: dict[str, object]) -> None:
    path = f"/v1/jobs/{trained['id']}/evaluations"
    cases = [
        ({"ways": [10]}, 422, "10-way tasks need 10 classes in the test split; it has 6"),
        ({"groups": ["Nope"]}, 422, "names groups ['Nope'] that the data set lacks"),
        ({"data": "missing"}, 422, "data: "),
        ({"shots": [5], "queries": 5}, 422, "has 6 images in"),
        ({"tasks": 20_000}, 422, "less than or equal to 10000"),
        ({"ways": [1]}, 422, "greater than or equal to 2"),
        ({"steps": 1000, "shots": [60]}, 422, "exceeds this service's limit"),
        ({"way": [5]}, 422, "Extra inputs are not permitted"),
    ]
    with server.client() as client:
        before = client.get("/v1/evaluations").json()["count"]
        for body, code, message in cases:
            response = client.post(path, json=body)
            assert response.status_code == code, (body, response.text)
            assert message in response.text, (body, response.text)
        assert client.get("/v1/evaluations").json()["count"] == before  # nothing stored
        assert client.post(f"/v1/jobs/{'0' * 32}/evaluations", json={}).status_code == 404
        assert client.get(f"/v1/evaluations/{'0' * 32}").status_code == 404
        missing = client.post("/v1/evaluations", json={"model": "models:/nope/1"})
        assert missing.status_code == 404, missing.text


def test_an_image_folder_job_trains_on_rgb_images(server: Server) -> None:
    body = {
        "task": "image_folder",
        "data": "folders",
        "ways": 2,
        "shots": 1,
        "queries": 1,
        "eval_shots": [1],
        "rounds": 3,
        "meta_batch_size": 2,
        "inner_batch_size": 2,
        "eval_every": 0,
        "eval_tasks": 2,
        "eval_steps": 3,
        "final_eval_tasks": 2,
    }
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        record = wait_for_state(client, response.json()["id"], {"succeeded", "failed"})
    assert record["state"] == "succeeded", record
    assert "eval_acc_2w1s" in record["evaluation"]
