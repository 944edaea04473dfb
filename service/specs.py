"""Job specifications: the one vocabulary shared by the API, the CLI, MLflow params and the code.

Every field is optional and validated; unknown fields are rejected, so a typo never falls back
silently to a default.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from reptile.inner import InnerConfig
from reptile.meta import MetaConfig


class SineJobSpec(BaseModel):
    """A meta-training job on sine-wave regression.

    The defaults meta-train to a held-out 10-shot MSE far below a random initialisation's in a
    few minutes on two CPU cores (see the README for the numbers and the comparison with the
    serial example of the Reptile blog).
    """

    model_config = ConfigDict(extra="forbid")

    task: Literal["sine"] = Field(default="sine", description="Task family")
    name: str | None = Field(default=None, max_length=200, description="MLflow run name")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seeds φ's init and all tasks")
    rounds: int = Field(default=3000, ge=1, le=1_000_000, description="Meta-updates")
    meta_batch_size: int = Field(default=10, ge=1, le=4096, description="Tasks per round")
    shots: int = Field(default=50, ge=1, le=10_000, description="Points per training task")
    inner_steps: int = Field(default=5, ge=1, le=10_000, description="Inner steps per task (k)")
    inner_batch_size: int = Field(default=10, ge=1, le=10_000, description="Points per step")
    inner_lr: FiniteFloat = Field(default=0.02, gt=0, le=100, description="Inner step size")
    inner_optimizer: Literal["sgd", "adam"] = Field(default="sgd", description="Inner optimiser")
    outer_lr: FiniteFloat = Field(default=0.005, gt=0, le=100, description="ε at round 0")
    outer_lr_final: FiniteFloat = Field(default=0.0, ge=0, le=100, description="ε at the end")
    outer_optimizer: Literal["sgd", "adam"] = Field(
        default="adam", description="sgd: plain Reptile; adam: Adam on the pseudo-gradient φ − W"
    )
    num_workers: int = Field(default=2, ge=1, le=256, description="Ray actors")
    eval_every: int = Field(default=250, ge=0, le=1_000_000, description="Rounds between evals")
    eval_tasks: int = Field(default=32, ge=1, le=10_000, description="Held-out tasks per eval")
    eval_shots: int = Field(default=10, ge=1, le=10_000, description="Shots per held-out task")
    eval_steps: int = Field(default=32, ge=1, le=10_000, description="Longest eval adaptation")
    checkpoint_every: int = Field(default=250, ge=1, le=1_000_000, description="Rounds/ckpt")

    @model_validator(mode="after")
    def _consistent(self) -> "SineJobSpec":
        if self.inner_batch_size > self.shots:
            raise ValueError(
                f"inner_batch_size ({self.inner_batch_size}) cannot exceed shots ({self.shots})"
            )
        if self.outer_lr_final > self.outer_lr:
            raise ValueError("outer_lr_final must not exceed outer_lr (ε only anneals down)")
        return self

    def task_options(self) -> dict[str, Any]:
        """Options of the task family (what an actor needs to rebuild tasks from seeds)."""
        return {"shots": self.shots, "eval_shots": self.eval_shots}

    def inner_config(self) -> InnerConfig:
        return InnerConfig(
            steps=self.inner_steps,
            batch_size=self.inner_batch_size,
            lr=self.inner_lr,
            optimizer=self.inner_optimizer,
        )

    def meta_config(self) -> MetaConfig:
        return MetaConfig(
            rounds=self.rounds,
            meta_batch_size=self.meta_batch_size,
            outer_lr=self.outer_lr,
            outer_lr_final=self.outer_lr_final,
            outer_optimizer=self.outer_optimizer,
            inner=self.inner_config(),
        )

    def eval_step_counts(self) -> list[int]:
        """Adaptation lengths scored at each evaluation: 1, k and eval_steps (and 0 = φ)."""
        return sorted({0, 1, self.inner_steps, self.eval_steps})


JobSpec = SineJobSpec
