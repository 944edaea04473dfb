"""MLflow tracking for one job, off the training thread and tolerant of MLflow outages.

The trainer enqueues metrics, artifacts and figures and never waits on MLflow, nor on drawing
a figure. A background thread creates (or reopens) the job's run and replays the queue in order
through a `RunWriter` (`service.run_writer`): while MLflow is unreachable the thread keeps the
queue, reports `degraded`, and retries until it comes back; a record that MLflow refuses for
good is left out, shown as `last_error`, and the queue goes on. Metrics are journaled on disk
before they are queued (`service.journal`), so a controller that is killed loses none. A job's
final model is registered the same way, so an outage delays its registration but never fails
the job. The thread draws each figure when its turn comes, and only the latest one queued for
a path (a backlog after an outage draws each figure once, not once per evaluation it missed).
"""

import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric

from service.journal import Journal
from service.plots import Drawing
from service.run_writer import ModelVersionRef, RunRef, RunWriter

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call


@dataclass(frozen=True)
class _Metrics:
    metrics: list[Metric]
    entries: int = 1  # journal lines these metrics came from


@dataclass(frozen=True)
class _Artifact:
    staged: Path  # a copy owned by the tracker
    artifact_dir: str


@dataclass(frozen=True)
class _Figure:
    draw: Drawing
    artifact_path: str
    number: int  # how many figures were logged to this path before it


@dataclass(frozen=True)
class _Tag:
    key: str
    value: str


@dataclass(frozen=True)
class _Model:
    staged: Path  # a saved MLflow model, staged; logged as the run's `model` artifacts
    name: str  # registered model
    tags: dict[str, str]
    description: str


@dataclass(frozen=True)
class _Mark:
    reached: threading.Event  # set when the thread gets here: all before it is done


@dataclass(frozen=True)
class _End:
    status: str | None  # None: leave the run open (the job will resume in it)


_Record = _Metrics | _Artifact | _Tag | _Model | _End  # what reaches MLflow as it is


class Tracker:
    """The MLflow run of one job; thread-safe to call from the training thread."""

    def __init__(
        self, writer: RunWriter, staging_dir: Path, *, flush_interval_s: float = 1.0
    ) -> None:
        """`writer` does the MLflow writes on this tracker's thread; `staging_dir` holds the
        metrics journal and staged artifacts."""
        self._writer = writer
        self._staging_dir = staging_dir
        self._flush_interval_s = flush_interval_s
        self._queue: queue.Queue[_Record | _Figure | _Mark] = queue.Queue()
        self._figures: dict[str, int] = {}  # artifact path → figures logged to it
        self._journal = Journal(staging_dir)
        entries, self._applied = self._journal.load()
        # a resumed job re-runs the rounds after its checkpoint: what is journaled stays as is
        self._last_step: dict[str, int] = {}
        for metric in (m for entry in entries for m in entry):
            self._last_step[metric.key] = max(metric.step, self._last_step.get(metric.key, -1))
        for entry in entries[self._applied :]:
            self._queue.put(_Metrics(entry))
        self._thread = threading.Thread(
            target=self._work, name=f"mlflow-{writer.run_name}", daemon=True
        )
        self._thread.start()

    @property
    def run(self) -> RunRef | None:
        """The job's run, once created or reopened."""
        return self._writer.run

    @property
    def model(self) -> ModelVersionRef | None:
        """The registered model version, once registered."""
        return self._writer.model

    @property
    def degraded(self) -> bool:
        """Whether MLflow is unreachable now (the records wait in the queue)."""
        return self._writer.degraded

    @property
    def last_error(self) -> str | None:
        """The error to show on the job: MLflow's current one while tracking is degraded, else
        the latest record that MLflow refused and that was left out (kept to the end)."""
        return self._writer.last_error

    # --- called by the trainer -----------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Journal, then queue, the metrics of `step` that this run does not hold yet."""
        timestamp = int(time.time() * 1000)
        new = [
            Metric(key, float(value), timestamp, step)
            for key, value in metrics.items()
            if step > self._last_step.get(key, -1)
        ]
        if not new:
            return
        self._journal.append(new)
        for metric in new:
            self._last_step[metric.key] = step
        self._queue.put(_Metrics(new))

    def log_artifact(self, data: bytes, artifact_path: str) -> None:
        """Log `data` as the file `artifact_path` (e.g. "plots/sine_fit.png"), replacing it."""
        self._queue.put(self._stage(data, artifact_path))

    def log_figure(self, draw: Drawing, artifact_path: str) -> None:
        """Log the PNG that `draw()` returns as `artifact_path`, replacing it; drawn on the
        background thread, and not at all when a later figure for the path is queued by then."""
        number = self._figures.get(artifact_path, 0)
        self._figures[artifact_path] = number + 1
        self._queue.put(_Figure(draw, artifact_path, number))

    def set_tag(self, key: str, value: str) -> None:
        """Set (or replace) a tag of the run."""
        self._queue.put(_Tag(key, value))

    def register_model(
        self, name: str, save: Callable[[Path], None], *, tags: dict[str, str], description: str
    ) -> None:
        """Save a model now with `save(directory)`, then log it as the run's `model` artifacts
        and register it as a new version of `name` (created if missing), in queue order."""
        staged = Path(tempfile.mkdtemp(dir=self._ensure_staging())) / "model"
        save(staged)
        self._queue.put(_Model(staged, name, tags, description))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until all logged so far reached MLflow, figures drawn; False if not within
        `timeout` (e.g. MLflow is down). For a measurement that must not share the machine
        with the tracker's work."""
        mark = _Mark(threading.Event())
        self._queue.put(mark)
        return mark.reached.wait(timeout)

    def finish(self, status: str | None, timeout: float = 30.0) -> bool:
        """Flush the queue, then end the run with `status` (FINISHED, FAILED, KILLED).

        `status=None` flushes and leaves the run open for a job that will resume. Returns
        whether everything reached MLflow within `timeout`; if not, the thread keeps trying
        in the background.
        """
        self._queue.put(_End(status))
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the background thread -------------------------------------------------------------
    def _ensure_staging(self) -> Path:
        self._staging_dir.mkdir(parents=True, exist_ok=True)
        return self._staging_dir

    def _stage(self, data: bytes, artifact_path: str) -> _Artifact:
        """A copy of `data` owned by the tracker, deleted once it reached MLflow."""
        artifact_dir, _, name = artifact_path.rpartition("/")
        staged = Path(tempfile.mkdtemp(dir=self._ensure_staging())) / name
        staged.write_bytes(data)
        return _Artifact(staged, artifact_dir)

    def _drawn(self, figure: _Figure) -> _Artifact | None:
        """The figure, drawn and staged; None when a later one replaces it, or drawing failed
        (a figure is a view of the job: the job and its tracking go on without it)."""
        if figure.number + 1 < self._figures[figure.artifact_path]:
            return None
        try:
            return self._stage(figure.draw(), figure.artifact_path)
        except Exception:
            log.exception("could not draw %s; the run goes on without it", figure.artifact_path)
            return None

    def _work(self) -> None:
        self._writer.open()
        last_write = 0.0
        while True:
            item = self._queue.get()
            if isinstance(item, _Mark):
                item.reached.set()
                continue
            if isinstance(item, _Figure):
                drawn = self._drawn(item)
                if drawn is None:
                    continue
                item = drawn
            if isinstance(item, _Metrics):
                # One write per interval, however fast the rounds: each store write costs CPU
                # that training needs.
                time.sleep(max(0.0, last_write + self._flush_interval_s - time.monotonic()))
                item = self._merge_metrics(item)
            if self.run is not None:  # else MLflow refused the run: the records are dropped
                self._apply(item)
            last_write = time.monotonic()
            if isinstance(item, _Artifact | _Model):  # logged or left out: the copy is done
                shutil.rmtree(item.staged.parent, ignore_errors=True)
            if isinstance(item, _Metrics):
                self._applied += item.entries
                self._journal.mark_applied(self._applied)
            if isinstance(item, _End):
                return

    def _merge_metrics(self, first: _Metrics) -> _Metrics:
        """Coalesce queued metric items into one batch (keeps order; stops at other items)."""
        metrics, entries = list(first.metrics), first.entries
        while len(metrics) < MAX_METRICS_PER_BATCH:
            try:
                item = self._queue.queue[0]
            except IndexError:
                break
            if (
                not isinstance(item, _Metrics)
                or len(metrics) + len(item.metrics) > MAX_METRICS_PER_BATCH
            ):
                break
            self._queue.get_nowait()  # the item just looked at
            metrics.extend(item.metrics)
            entries += item.entries
        return _Metrics(metrics, entries)

    def _apply(self, item: _Record) -> None:
        writer = self._writer
        if isinstance(item, _Metrics):
            writer.log_batch(item.metrics)
        elif isinstance(item, _Artifact):
            writer.log_artifact(item.staged, item.artifact_dir)
        elif isinstance(item, _Tag):
            writer.set_tag(item.key, item.value)
        elif isinstance(item, _Model):
            writer.register(item.staged, item.name, tags=item.tags, description=item.description)
        elif item.status is not None:
            writer.end(item.status)


def run_url(ui_url: str, run: RunRef) -> str:
    """The link to a run in the MLflow UI, in its model-training view (the MLflow 3 UI opens
    the GenAI one unless the link asks, whatever the experiment's kind)."""
    run_page = f"{ui_url.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    return f"{run_page}?workflowType=machine_learning"


__all__ = ["ModelVersionRef", "RunRef", "Tracker", "run_url"]
