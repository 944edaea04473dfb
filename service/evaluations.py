"""Evaluations as a resource: a model scored on held-out tasks a user describes, on Ray actors.

A submitted evaluation is checked at once (data set, groups, enough classes and images for
the ways and shots asked, the work limit), stored, and run on a thread of its own with its own
actors, which score each (ways, shots) setting on `tasks` fixed held-out tasks as a job's
evaluation does (`FewShotEvaluation.accuracies`, any ways through `with_ways`). The result is
an MLflow run in the model's experiment, nested under the run that trained the model.

Records live in the store; one that a controller restart interrupted is marked failed (its
request can simply be sent again), never left `running`.
"""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlflow.entities import Metric
from pydantic import ValidationError

from reptile.tasks import eval_task_seeds
from reptile.tasks.fewshot import load_images
from service.adaptation import Source
from service.datasets import DatasetError
from service.errors import Busy, Invalid, NotFound, Unavailable
from service.evaluation import FewShotEvaluation, accuracy_metrics, mean_and_ci95
from service.evaluation_schemas import (
    EvaluationCreate,
    EvaluationRecord,
    EvaluationRun,
    EvaluationState,
    SettingResult,
)
from service.records import now
from service.runtime import check_families, make_pool, make_run_writer, prepare_dataset
from service.settings import Settings
from service.specs import ImageJobSpec, SineJobSpec, parse_spec
from service.store import Store, new_id
from service.tracking import run_url
from workers.cluster import shortfall

log = logging.getLogger(__name__)

EVALUATION_RETRY_S = 30  # Retry-After when as many evaluations as allowed are pending


def evaluation_spec(spec: ImageJobSpec, body: EvaluationCreate) -> ImageJobSpec:
    """The model's job spec with the body's choices: what the held-out families, the
    adaptation config and the actors are built from. Training fields are set so that they
    never stand in the way (one shot a class: an evaluation set need not hold training's)."""
    ways = body.ways or [spec.ways]
    changes: dict[str, Any] = {
        "ways": max(ways),
        "shots": 1,
        "inner_batch_size": 1,
        "eval_shots": body.shots or spec.eval_shots,
        "eval_steps": body.steps or spec.eval_steps,
    }
    for field, value in (
        ("data", body.data),
        ("held_out", body.groups),
        ("queries", body.queries),
        ("inner_lr", body.lr),
        ("transductive", body.transductive),
        ("num_workers", body.num_workers),
    ):
        if value is not None:
            changes[field] = value
    try:
        evaluated = parse_spec({**spec.model_dump(), **changes})
    except ValidationError as error:
        problems = (e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise Invalid("; ".join(problems)) from None
    assert isinstance(evaluated, ImageJobSpec)
    return evaluated


class Evaluations:
    """The evaluations of this service: submitted, stored and run one after another."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="evaluation")
        for record in store.load_evaluations():
            if not record.state.terminal:  # a restart interrupted it
                record.state, record.finished_at = EvaluationState.failed, now()
                record.error = "interrupted by a controller restart; submit it again"
                self._save(record)

    def submit(self, source: Source, body: EvaluationCreate) -> EvaluationRecord:
        """Check the request against the model and its data, store it, and queue it."""
        if isinstance(source.spec, SineJobSpec):
            raise Invalid(
                "evaluations score image classifiers; a sine job's held-out MSE is in its "
                "evaluation metrics"
            )
        spec = evaluation_spec(source.spec, body)
        if problem := shortfall(spec.num_workers, 1, spec.gpus_per_worker):
            raise Invalid(problem)
        try:
            dataset = prepare_dataset(self.settings, spec, training=False)
            assert dataset is not None
            if body.data is not None and body.groups is None:  # another data set: all of it
                groups = sorted(set(load_images(dataset).groups))
                spec = evaluation_spec(source.spec, body.model_copy(update={"groups": groups}))
            check_families(spec, dataset, training=False)
        except DatasetError as error:
            raise Invalid(f"data: {error}") from error
        held_out = spec.family(dataset, held_out_shots=spec.eval_shots[0]).held_out
        record = EvaluationRecord(
            id=new_id(),
            state=EvaluationState.queued,
            job_id=source.job_id,
            model=source.model,
            round=source.round,
            request=body,
            mlflow=EvaluationRun(parent_run_id=source.run_id),
            created_at=now(),
            dataset=dataset,
            held_out=list(held_out),
        )
        with self._lock:
            pending = sum(not r.state.terminal for r in self.store.load_evaluations())
            if pending >= self.settings.max_pending_evaluations:
                raise Busy.pending("evaluations", pending, EVALUATION_RETRY_S)
            self._save(record, refuse=True)
        accepted = record.model_copy(deep=True)  # as queued, before its thread can start it
        self._executor.submit(self._run, record, source, spec)
        return accepted

    def get(self, evaluation_id: str) -> EvaluationRecord:
        try:
            return self.store.load_evaluation(evaluation_id)
        except KeyError:
            raise NotFound(f"no evaluation {evaluation_id!r}") from None

    def records(self) -> list[EvaluationRecord]:
        return self.store.load_evaluations()

    def shutdown(self) -> None:
        """Stop a running evaluation at its next setting; queued ones never start."""
        self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _save(self, record: EvaluationRecord, *, refuse: bool = False) -> None:
        try:
            self.store.save_evaluation(record)
        except OSError as error:
            if refuse:
                raise Unavailable(f"cannot store the evaluation: {error}") from error
            log.error("could not persist evaluation %s: %s", record.id, error)

    def _run(self, record: EvaluationRecord, source: Source, spec: ImageJobSpec) -> None:
        record.state = EvaluationState.running
        self._save(record)
        try:
            record.results, metrics = self._score(record, source, spec)
            if self._stop.is_set():
                raise RuntimeError("interrupted by a controller shutdown; submit it again")
            record.mlflow = self._log(record, spec, metrics)
            record.state = EvaluationState.succeeded
        except Exception as error:
            log.exception("evaluation %s failed", record.id)
            record.state, record.error = EvaluationState.failed, f"{type(error).__name__}: {error}"
        record.finished_at = now()
        self._save(record)

    def _score(
        self, record: EvaluationRecord, source: Source, spec: ImageJobSpec
    ) -> tuple[list[SettingResult], dict[str, float]]:
        """Every (ways, shots) setting of the request, on the evaluation's own actors; and
        their metrics for MLflow (`accuracy_metrics`, as a job's evaluations log them)."""
        ways = record.request.ways or [spec.ways]
        first = spec.held_out_options(record.dataset, ways[0], spec.eval_shots[0])
        pool = make_pool(self.settings, spec, record.dataset, self._stop.is_set, first)
        try:
            evaluation = FewShotEvaluation(spec, record.dataset, pool.score_held_out)
            seeds = eval_task_seeds(record.request.tasks)
            results: list[SettingResult] = []
            metrics: dict[str, float] = {}
            for w in ways:
                for k in spec.eval_shots:
                    if self._stop.is_set():
                        return results, metrics
                    accuracies = evaluation.accuracies(source.phi, w, k, seeds)
                    accuracy, ci95 = mean_and_ci95(accuracies)
                    results.append(
                        SettingResult(
                            ways=w, shots=k, accuracy=accuracy, ci95=ci95, tasks=len(accuracies)
                        )
                    )
                    metrics |= accuracy_metrics(w, k, accuracies, count=True)
            return results, metrics
        finally:
            pool.shutdown()

    def _log(
        self, record: EvaluationRecord, spec: ImageJobSpec, metrics: dict[str, float]
    ) -> EvaluationRun:
        """The evaluation's MLflow run: its request as params, `metrics` at step 0."""
        parent = record.mlflow.parent_run_id
        tags = {"evaluation_id": record.id, "job_id": record.job_id}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        if record.model is not None:
            tags["model_uri"] = record.model
        params = {
            **record.request.model_dump(exclude_none=True),
            "data": spec.data,
            "groups": record.held_out,
            "steps": spec.eval_steps,
            "lr": spec.inner_lr,
            "transductive": spec.transductive,
            "queries": spec.queries,
            "round": record.round,
        }
        writer = make_run_writer(
            self.settings,
            spec.task,
            run_name=f"evaluation-{record.id[:8]}",
            params=params,
            tags=tags,
        )
        writer.open()
        timestamp = int(now().timestamp() * 1000)
        writer.log_batch([Metric(k, v, timestamp, 0) for k, v in metrics.items()])
        writer.end("FINISHED")
        run = writer.run
        return EvaluationRun(
            experiment_id=run.experiment_id if run else None,
            run_id=run.run_id if run else None,
            parent_run_id=parent,
            ui_url=run_url(self.settings.mlflow_ui_url, run) if run else None,
            error=writer.last_error,
        )
