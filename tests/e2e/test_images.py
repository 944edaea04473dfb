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


def test_bad_image_adaptations_get_a_4xx(server: Server, trained: dict[str, object]) -> None:
    job_id = trained["id"]
    good = [base64.b64encode(_character(server, 3, c, 1)).decode() for c in (1, 2, 3)]
    tiny = io.BytesIO()
    Image.new("L", (3, 3)).save(tiny, format="PNG")
    cases = [
        ({"support": {"images": good, "labels": ["a", "b"]}}, "3 support images but 2 labels"),
        ({"support": {"images": good, "labels": ["a", "a", "b"]}}, "has 2 distinct labels"),
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
    }
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        record = wait_for_state(client, response.json()["id"], {"succeeded", "failed"})
    assert record["state"] == "succeeded", record
    assert "eval_acc_2w1s" in record["evaluation"]
