"""The on-disk store: job records, weights and adaptations under the data directory.

    <data_dir>/jobs/<id>/record.json           spec, state, progress, last error, MLflow ids
    <data_dir>/jobs/<id>/checkpoint.safetensors φ, outer optimiser, round (see weights.py)
    <data_dir>/jobs/<id>/weights.safetensors    the final (or cancelled-at) meta-weights
    <data_dir>/adaptations/<id>/record.json and weights.safetensors
    <data_dir>/evaluations/<id>.json            request, state, results, MLflow ids

Ids are random UUID hex strings; anything else is rejected before it touches a path.
"""

import re
import uuid
from pathlib import Path

from pydantic import ValidationError

from reptile.params import Params
from service.evaluation_schemas import EvaluationRecord
from service.files import atomic_write
from service.records import AdaptationRecord, JobRecord
from service.weights import read_weights, write_weights

_ID = re.compile(r"^[0-9a-f]{32}$")


def new_id() -> str:
    """An unguessable id (122 random bits)."""
    return uuid.uuid4().hex


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.jobs_dir = data_dir / "jobs"
        self.adaptations_dir = data_dir / "adaptations"
        self.evaluations_dir = data_dir / "evaluations"
        for directory in (self.jobs_dir, self.adaptations_dir, self.evaluations_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # --- jobs ---
    def job_dir(self, job_id: str) -> Path:
        if not valid_id(job_id):
            raise KeyError(job_id)
        return self.jobs_dir / job_id

    def save_job(self, record: JobRecord) -> None:
        atomic_write(
            self.job_dir(record.id) / "record.json", record.model_dump_json(indent=2).encode()
        )

    def load_jobs(self) -> list[JobRecord]:
        """Every readable job record, oldest first (unreadable ones are skipped, not fatal)."""
        records = []
        for path in self.jobs_dir.glob("*/record.json"):
            try:
                records.append(JobRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                continue
        return sorted(records, key=lambda r: r.created_at)

    def checkpoint_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "checkpoint.safetensors"

    def weights_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "weights.safetensors"

    def staging_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "mlflow-staging"

    # --- adaptations ---
    def adaptation_dir(self, adaptation_id: str) -> Path:
        if not valid_id(adaptation_id):
            raise KeyError(adaptation_id)
        return self.adaptations_dir / adaptation_id

    def save_adaptation(self, record: AdaptationRecord, weights: Params) -> None:
        """Weights first, record last: a record on disk always has its weights."""
        directory = self.adaptation_dir(record.id)
        write_weights(directory / "weights.safetensors", weights)
        atomic_write(directory / "record.json", record.model_dump_json(indent=2).encode())

    def load_adaptation(self, adaptation_id: str) -> AdaptationRecord:
        path = self.adaptation_dir(adaptation_id) / "record.json"
        if not path.exists():
            raise KeyError(adaptation_id)
        return AdaptationRecord.model_validate_json(path.read_bytes())

    def load_adaptation_weights(self, adaptation_id: str) -> Params:
        return read_weights(self.adaptation_dir(adaptation_id) / "weights.safetensors")

    # --- evaluations ---
    def _evaluation_path(self, evaluation_id: str) -> Path:
        if not valid_id(evaluation_id):
            raise KeyError(evaluation_id)
        return self.evaluations_dir / f"{evaluation_id}.json"

    def save_evaluation(self, record: EvaluationRecord) -> None:
        atomic_write(self._evaluation_path(record.id), record.model_dump_json(indent=2).encode())

    def load_evaluation(self, evaluation_id: str) -> EvaluationRecord:
        path = self._evaluation_path(evaluation_id)
        if not path.exists():
            raise KeyError(evaluation_id)
        return EvaluationRecord.model_validate_json(path.read_bytes())

    def load_evaluations(self) -> list[EvaluationRecord]:
        """Every readable evaluation record, oldest first."""
        records = []
        for path in self.evaluations_dir.glob("*.json"):
            try:
                records.append(EvaluationRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                continue
        return sorted(records, key=lambda r: r.created_at)
