"""What the service refuses, by kind: the API maps each kind to its HTTP status (api/errors.py)."""

# Retry-After hints: an adaptation takes about a second, a job slot frees in minutes.
ADAPTATION_RETRY_S = 1
JOB_RETRY_S = 60


class NotFound(LookupError):
    """No job, sweep, adaptation or evaluation with that id."""


class Conflict(RuntimeError):
    """The request does not fit the job's current state."""


class Invalid(ValueError):
    """The request is well-formed but cannot be served (e.g. more workers than the cluster has)."""


class Unavailable(RuntimeError):
    """The service cannot serve the request now: its disk is full, or the MLflow model
    registry it needs cannot be reached."""


class Busy(RuntimeError):
    """The service is at one of its limits; the same request may succeed `retry_after_s` later."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @classmethod
    def pending(cls, what: str, pending: int, retry_after_s: int) -> "Busy":
        """`pending` of `what` ("jobs", "evaluations", "sweeps") are queued or running: that
        resource's `max_pending_…` limit."""
        return cls(
            f"{pending} {what} are queued or running, the limit of this service; "
            "retry when one has finished",
            retry_after_s,
        )

    @classmethod
    def jobs_pending(cls, pending: int) -> "Busy":
        """`pending` jobs are queued or running: the `max_pending_jobs` limit."""
        return cls.pending("jobs", pending, JOB_RETRY_S)

    @classmethod
    def adaptations_running(cls, limit: int) -> "Busy":
        """`limit` adaptations are running: the `max_concurrent_adaptations` limit."""
        return cls(
            f"{limit} adaptations are running, the limit of this service; retry in a moment",
            ADAPTATION_RETRY_S,
        )
