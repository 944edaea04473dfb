"""The deployed topology without containers: PostgreSQL, an MLflow tracking server on it that
serves the artifacts, and a two-node Ray cluster, as local processes on free ports.

Every process is started here and stopped here by its own process id, even when the test fails;
never `ray stop` (it stops every Ray on the host, other users' too).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.utils.net import free_port, wait_until

BIN = Path(sys.executable).parent  # the venv's `ray` and `mlflow`

# Waits until `count` nodes are alive, then prints {node id: resources} of the live nodes.
_NODES_PROBE = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
while len(alive := [n for n in ray.nodes() if n["Alive"]]) < int(sys.argv[2]):
    time.sleep(0.5)
print(json.dumps({n["NodeID"]: n["Resources"] for n in alive}))
"""


@dataclass(frozen=True)
class _Running:
    process: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        """Fail with the log's tail if the process has exited."""
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise AssertionError(f"{self.process.args!r} exited: {self.process.returncode}\n{tail}")


@dataclass(frozen=True)
class Topology:
    database: str  # postgresql://… : MLflow's backend store
    mlflow_url: str  # the tracking server: what MLFLOW_TRACKING_URI names
    ray_address: str  # the head's GCS, host:port: what RAY_ADDRESS names
    ray_nodes: dict[str, str]  # node name (a custom resource of that node only) → Ray node id
    mlflow: _Running

    def wait_for_mlflow(self) -> None:
        """Wait for the MLflow server's /health (it creates its schema first: the slowest)."""
        wait_until(lambda: _healthy(self.mlflow_url, self.mlflow), 180, "MLflow's /health")


def postgres_bin() -> Path | None:
    """The directory of the PostgreSQL server programs (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextmanager
def topology(logs: Path, artifacts: Path, env: dict[str, str], num_cpus: int) -> Iterator[Topology]:
    """Start everything, the slow starters (MLflow, Ray) side by side; yield once both Ray
    nodes have joined, with MLflow started (`Topology.wait_for_mlflow`).

    `env` is the Ray nodes' environment (token auth); each node gets `num_cpus` CPUs.
    """
    with ExitStack() as stack:
        start = _Starter(stack, logs)
        pg_dir = stack.enter_context(_short_temp_dir("reptile-pg-"))
        ray_dir = stack.enter_context(_short_temp_dir("reptile-ray-"))
        ray_address, head = _start_head(start, ray_dir, env, num_cpus)
        database = _postgres(pg_dir, start)  # while the head starts
        mlflow_port = free_port()
        mlflow = start(
            "mlflow",
            [str(BIN / "mlflow"), "server", "--backend-store-uri", database]
            + ["--serve-artifacts", "--artifacts-destination", str(artifacts)]
            + ["--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
        )
        ray_nodes = _join_worker(start, ray_dir, env, num_cpus, ray_address, head)
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        yield Topology(database, mlflow_url, ray_address, ray_nodes, mlflow)


@contextmanager
def ray_cluster(logs: Path, env: dict[str, str], num_cpus: int) -> Iterator[tuple[str, list[str]]]:
    """Only the two-node Ray cluster (head and worker, `num_cpus` CPUs each) of `topology`:
    yields its address and node ids once both nodes have joined."""
    with ExitStack() as stack:
        start = _Starter(stack, logs)
        ray_dir = stack.enter_context(_short_temp_dir("reptile-ray-"))
        address, head = _start_head(start, ray_dir, env, num_cpus)
        nodes = _join_worker(start, ray_dir, env, num_cpus, address, head)
        yield address, list(nodes.values())


def _start_head(
    start: "_Starter", ray_dir: Path, env: dict[str, str], num_cpus: int
) -> tuple[str, "_Running"]:
    """Start the Ray head (without waiting for it); its GCS address and its process."""
    gcs_port = free_port()
    head = start(
        "ray-head",
        _ray_start("ray_head", num_cpus, ray_dir / "head")
        + ["--head", "--port", str(gcs_port), "--include-dashboard", "false"]
        + ["--ray-client-server-port", str(free_port())],
        env=env,
    )
    return f"127.0.0.1:{gcs_port}", head


def _join_worker(
    start: "_Starter",
    ray_dir: Path,
    env: dict[str, str],
    num_cpus: int,
    address: str,
    head: "_Running",
) -> dict[str, str]:
    """Start the worker node once the head listens; {node name: Ray node id} once both joined."""
    port = int(address.rpartition(":")[2])
    wait_until(lambda: _listening(port, head), 120, "the Ray head's GCS")
    worker = start(
        "ray-worker",
        _ray_start("ray_worker", num_cpus, ray_dir / "worker") + ["--address", address],
        env=env,
    )
    nodes = _alive_nodes(address, 2, env, [head, worker])
    return {
        name: node_id
        for node_id, resources in nodes.items()
        for name in ("ray_head", "ray_worker")
        if name in resources
    }


@dataclass(frozen=True)
class _Starter:
    """Starts processes whose stops `stack` owns: in reverse order, however the block ends."""

    stack: ExitStack
    logs: Path

    def __call__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
    ) -> _Running:
        log = self.logs / f"{name}.log"
        return self.stack.enter_context(_process(argv, log, env, stop_signal, user))


@contextmanager
def _process(
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
    user: str | None = None,
) -> Iterator[_Running]:
    """Run `argv` (output to `log`) for the block's duration, then stop it: signal, then kill."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, **_as_user(user)
        )
    try:
        yield _Running(process, log)
    finally:
        if process.poll() is None:
            process.send_signal(stop_signal)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _as_user(user: str | None) -> dict[str, Any]:
    return {"user": user, "group": user, "extra_groups": []} if user else {}


@contextmanager
def _short_temp_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under /tmp: Unix socket paths inside it must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _postgres(root: Path, start: _Starter) -> str:
    """Start PostgreSQL with its data and Unix socket in `root`; the URI of a `mlflow` database.

    initdb refuses to run as root, so as root the server runs as the `postgres` user.
    """
    bin_dir = postgres_bin()
    assert bin_dir is not None, "no PostgreSQL server programs"
    user = "postgres" if os.geteuid() == 0 else None
    if user is not None:
        shutil.chown(root, user, user)
    data, port = str(root / "data"), str(free_port())
    _run([str(bin_dir / "initdb"), "-D", data, "-U", "mlflow", "--auth=trust", "--no-sync"], user)
    server = start(
        "postgres",
        [str(bin_dir / "postgres"), "-D", data, "-p", port, "-k", str(root)]
        + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stop_signal=signal.SIGINT,  # PostgreSQL's "fast" shutdown: ends open sessions
        user=user,
    )

    def ready() -> bool:
        server.check()
        isready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", port]
        return subprocess.run(isready, check=False).returncode == 0

    wait_until(ready, 60, "PostgreSQL to accept connections")
    _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "mlflow", "mlflow"])
    return f"postgresql://mlflow@127.0.0.1:{port}/mlflow"


def _run(argv: list[str], user: str | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, **_as_user(user))
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}{result.stderr}"


def _ray_start(name: str, num_cpus: int, temp_dir: Path) -> list[str]:
    """`ray start --block` for one node, every port free (fixed defaults would clash)."""
    argv = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1"]
    argv += ["--num-cpus", str(num_cpus), "--resources", json.dumps({name: 1})]
    argv += ["--temp-dir", str(temp_dir), "--disable-usage-stats"]
    for option in (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    ):
        argv += [option, str(free_port())]
    return argv


def _listening(port: int, running: _Running) -> bool:
    running.check()
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes(
    address: str, count: int, env: dict[str, str], nodes: list[_Running]
) -> dict[str, dict[str, float]]:
    """{node id: resources} once `count` nodes have joined (asked by a driver in a subprocess,
    so this test process never joins a Ray cluster)."""
    probe = [sys.executable, "-c", _NODES_PROBE, address, str(count)]
    try:
        found = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as error:
        for node in nodes:
            node.check()
        raise AssertionError(f"only some of {count} Ray nodes joined: {error.stderr!r}") from None
    assert found.returncode == 0, found.stderr[-4000:]
    nodes_json: dict[str, dict[str, float]] = json.loads(found.stdout.strip().splitlines()[-1])
    return nodes_json


def _healthy(url: str, running: _Running) -> bool:
    running.check()
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
