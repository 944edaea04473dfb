"""The metrics handed to a job's tracker, journaled on disk until MLflow holds them.

Written before the metrics are queued, so a controller that is killed loses none: the job's
next tracker replays the lines MLflow did not yet have.
"""

import json
import logging
from pathlib import Path

from mlflow.entities import Metric

from service.files import atomic_write

log = logging.getLogger(__name__)


class Journal:
    """An append-only JSON-lines file (one line per `log_metrics` call) and the count of lines
    that MLflow already holds. Replaying a line twice is harmless: MLflow ignores a metric
    identical to a stored one (same key, value, step and timestamp).
    """

    def __init__(self, directory: Path) -> None:
        self._path = directory / "metrics.jsonl"
        self._applied_path = directory / "metrics.applied"

    def load(self) -> tuple[list[list[Metric]], int]:
        """Every complete line, and how many of them MLflow holds; drops a torn last line."""
        if not self._path.exists():
            return [], 0
        data = self._path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):  # a crash mid-append: the next append starts clean
            with self._path.open("r+b") as file:
                file.truncate(len(complete))
        entries = [
            [
                Metric(key, value, timestamp, step)
                for key, value, timestamp, step in json.loads(line)
            ]
            for line in complete.splitlines()
        ]
        applied = int(self._applied_path.read_text()) if self._applied_path.exists() else 0
        return entries, applied

    def append(self, metrics: list[Metric]) -> None:
        line = json.dumps([[m.key, m.value, m.timestamp, m.step] for m in metrics])
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a") as file:
            file.write(line + "\n")

    def mark_applied(self, count: int) -> None:
        """Record that MLflow holds (or refused for good) the first `count` lines."""
        try:
            atomic_write(self._applied_path, str(count).encode())
        except OSError as error:  # only costs a harmless replay after a crash
            log.warning("could not record MLflow's progress in the journal: %s", error)
