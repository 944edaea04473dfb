"""Prometheus metrics of one controller.

Job counts and running jobs' progress are read from the job records at scrape time, so they can
never drift from what the API reports; rounds and adaptation latencies are counted as they
happen. Everything lives in the registry the controller is given (one per app), so several
apps in one process (the tests) never clash in prometheus_client's global registry.
"""

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from service.records import JobRecord, JobState

# adaptation runs tens of steps on a small model: milliseconds (sine) to seconds (images)
ADAPTATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _JobsCollector:
    """Gauges computed from the job records on each scrape."""

    def __init__(self, jobs: Callable[[], list[JobRecord]]) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        records = self._jobs()
        by_state = GaugeMetricFamily("reptile_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            by_state.add_metric([state.value], sum(r.state == state for r in records))
        yield by_state
        labels = ["job_id", "task"]
        rounds = GaugeMetricFamily(
            "reptile_job_round", "Rounds completed by each running job", labels=labels
        )
        speed = GaugeMetricFamily(
            "reptile_job_tasks_per_second",
            "Training tasks per second in each running job's latest round",
            labels=labels,
        )
        for record in records:
            if record.state != JobState.running:
                continue
            rounds.add_metric([record.id, record.spec.task], record.round)
            if "tasks_per_s" in record.metrics:
                speed.add_metric([record.id, record.spec.task], record.metrics["tasks_per_s"])
        yield rounds
        yield speed


class ServiceMetrics:
    def __init__(
        self, jobs: Callable[[], list[JobRecord]], registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.rounds = Counter(
            "reptile_rounds",
            "Meta-training rounds completed (rounds re-run after a resume count again)",
            ["task"],
            registry=self.registry,
        )
        self.adaptation_seconds = Histogram(
            "reptile_adaptation_seconds",
            "Time to adapt a job's φ to a new task and predict its queries",
            ["task"],
            buckets=ADAPTATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_JobsCollector(jobs))
