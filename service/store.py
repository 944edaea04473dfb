"""The on-disk store: job records, weights and adaptations under the data directory.

    <data_dir>/jobs/<id>/record.json           spec, state, progress, last error, MLflow ids
    <data_dir>/jobs/<id>/checkpoint.safetensors φ, outer optimiser, round (see weights.py)
    <data_dir>/jobs/<id>/weights.safetensors    the final (or cancelled-at) meta-weights
    <data_dir>/adaptations/<id>/record.json and weights.safetensors

Ids are random UUID hex strings; anything else is rejected before it touches a path.
"""

import re
import uuid
from pathlib import Path

from pydantic import ValidationError

from reptile.params import Params
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
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.adaptations_dir.mkdir(parents=True, exist_ok=True)

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
