"""Service settings, read once at start-up from `REPTILE_*` environment variables.

`MLFLOW_TRACKING_URI` and `RAY_ADDRESS` are also honoured under their usual names, so the same
environment that configures the MLflow and Ray clients configures the service.
"""

from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; the README's configuration table lists them."""

    model_config = SettingsConfigDict(env_prefix="REPTILE_", extra="ignore")

    data_dir: Path = Field(default=Path("reptile-data"), description="Job records, weights, MLflow")
    host: str = Field(default="127.0.0.1", description="API bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="API port")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REPTILE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow store; default sqlite:///<data_dir>/mlflow.db",
    )
    mlflow_ui_url: str = Field(
        default="http://127.0.0.1:5000", description="Base URL of the MLflow UI, for run links"
    )
    data_root: Path | None = Field(
        default=None,
        description="Where image jobs' `data` paths live: relative paths resolve here, and "
        "when set, no path outside it is accepted",
    )
    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REPTILE_RAY_ADDRESS", "RAY_ADDRESS"),
        description="Ray cluster to join; unset starts a local Ray",
    )
    ray_num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs a local Ray advertises (default: the machine's)"
    )
    max_concurrent_jobs: int = Field(default=2, ge=1, description="Jobs training at once")
    round_timeout_s: float = Field(default=300.0, gt=0, description="Per-round wait for workers")
    actor_start_timeout_s: float = Field(
        default=300.0, gt=0, description="Wait for a new actor to start, on top of a round's"
    )
    chunk_retries: int = Field(default=2, ge=0, description="Re-runs of a failed chunk")
    auto_resume: bool = Field(
        default=True, description="Resume interrupted jobs from their checkpoint at start-up"
    )
    max_body_bytes: int = Field(
        default=16 * 2**20, ge=1024, description="Largest request body accepted (413 beyond)"
    )
    max_concurrent_adaptations: int = Field(
        default=4, ge=1, description="Adaptations computed at once (429 beyond)"
    )
    max_pending_jobs: int = Field(
        default=16, ge=1, description="Queued plus running jobs (429 for a submission beyond)"
    )
    max_pending_evaluations: int = Field(
        default=8,
        ge=1,
        description="Queued plus running evaluations (429 beyond; one runs at once)",
    )
    sweep_cpus: int | None = Field(
        default=None,
        ge=0,
        description="CPUs that sweep trials may hold at once (docs/sweeps.md); default: the "
        "Ray cluster's less 2 per concurrent job (a default job's workers)",
    )
    max_pending_sweeps: int = Field(
        default=4, ge=1, description="Queued plus running sweeps (429 for a submission beyond)"
    )
    max_sweep_trials: int = Field(default=64, ge=1, description="Trials of one sweep")
    max_sweep_rounds: int = Field(
        default=200_000, ge=1, description="Rounds of one sweep, all its trials together"
    )
    api_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Bearer token every endpoint but /healthz and /readyz requires; unset: none",
    )

    @field_validator("data_dir", "data_root")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @cached_property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir / 'mlflow.db'}"

    @cached_property
    def artifact_root(self) -> str:
        """Where new MLflow experiments keep artifacts (a local folder under the data dir)."""
        return (self.data_dir / "mlartifacts").as_uri()
