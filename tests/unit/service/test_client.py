"""The client's pieces that need no service: SSE parsing, the bearer token, a light import."""

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from api.client import ReptileClient, server_sent_events


def test_server_sent_events_are_parsed_per_the_spec() -> None:
    lines = [
        ": ping",
        "event: progress",
        'data: {"round": 1,',
        'data: "x": 2}',
        "",
        "",
        "data:no space",
        "",
        "event: end",
        "data: {}",
        "",
    ]
    assert list(server_sent_events(lines)) == [
        ("progress", '{"round": 1,\n"x": 2}'),
        ("message", "no space"),
        ("end", "{}"),
    ]


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str | None]]]:
    """A loopback HTTP server answering `GET /v1/jobs` with no jobs; records Authorization."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"data": [], "count": 0}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


def test_a_token_is_sent_as_a_bearer_header(
    recorder: tuple[str, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = recorder
    monkeypatch.delenv("REPTILE_API_TOKEN", raising=False)
    with ReptileClient(url) as client:
        assert client.jobs() == []
    with ReptileClient(url, token="s3cret") as client:
        client.jobs()
    monkeypatch.setenv("REPTILE_API_TOKEN", "from-env")
    monkeypatch.setenv("REPTILE_URL", url)
    with ReptileClient() as client:
        client.jobs()
    assert seen == [None, "Bearer s3cret", "Bearer from-env"]


def test_the_client_commands_load_neither_torch_nor_ray_nor_mlflow() -> None:
    """`reptile jobs list` must start fast: only `serve` and `train` need the heavy stack."""
    code = "import sys, api.cli; print(sorted({'torch', 'ray', 'mlflow'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
