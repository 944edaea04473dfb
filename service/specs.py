"""Job specifications: the one vocabulary shared by the API, the CLI, MLflow params and the code.

A job is a sine job or an image job, told apart by `task` (default "sine"). Every field but an
image job's `data` is optional and validated; unknown fields are rejected, so a typo never
falls back silently to a default.
"""

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    Tag,
    TypeAdapter,
    model_validator,
)

from service.execution import Execution

if TYPE_CHECKING:  # imported where used: API clients read specs without loading torch
    from reptile.algorithms import AlgorithmConfig
    from reptile.inner import InnerConfig
    from reptile.meta import MetaConfig
    from reptile.tasks.fewshot import FewShotFamily
    from reptile.tasks.sine import SineFamily

Optimizer = Literal["sgd", "adam"]
Algorithm = Literal["reptile", "fomaml", "maml"]  # reptile.algorithms.AlgorithmName

# The most classes a task may have: `reptile.tasks.fewshot.MAX_WAYS` (a test holds them equal;
# this module does not import torch).
MAX_WAYS = 50

# MLflow's limit on a param value (`mlflow.utils.validation.MAX_PARAM_VAL_LENGTH`; a test holds
# the two equal): every field is logged as a param, and MLflow refuses or truncates a longer one.
MAX_PARAM_VALUE_LENGTH = 6000


class _JobSpecBase(BaseModel):
    """Fields every task family shares (defaults are the sine job's; families override)."""

    # strict: a value of the wrong JSON type (`true` or "5" for an integer) is an error, as the
    # schema says, not coerced
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, max_length=200, description="MLflow run name")
    model_name: str | None = Field(
        default=None,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Registered model a successful job adds a version to (default: reptile-<task>)",
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seeds φ's init and all tasks")
    rounds: int = Field(default=3000, ge=1, le=1_000_000, description="Meta-updates")
    meta_batch_size: int = Field(default=10, ge=1, le=1024, description="Tasks per round")
    inner_steps: int = Field(default=5, ge=1, le=1000, description="Inner steps per task (k)")
    inner_batch_size: int = Field(default=10, ge=1, le=1000, description="Examples per step")
    inner_lr: FiniteFloat = Field(default=0.02, gt=0, le=100, description="Inner step size")
    inner_optimizer: Optimizer = Field(default="sgd", description="Inner optimiser")
    outer_lr: FiniteFloat = Field(default=0.005, gt=0, le=100, description="ε at round 0")
    outer_lr_final: FiniteFloat = Field(default=0.0, ge=0, le=100, description="ε at the end")
    outer_optimizer: Optimizer = Field(
        default="adam", description="sgd: plain Reptile; adam: Adam on the pseudo-gradient φ − W"
    )
    algorithm: Algorithm = Field(
        default="reptile",
        description="How a training task becomes a meta-gradient: reptile (φ − W), fomaml "
        "(first-order MAML: the inner loop's last step, as the paper's --foml), or maml (the "
        "gradient of the query loss through the k inner steps; needs tail_shots and inner SGD)",
    )
    tail_shots: int | None = Field(
        default=None,
        ge=1,
        le=999,
        description="fomaml/maml: the last tail_shots examples per class (sine: points) of each "
        "training task, held out of the inner loop: fomaml's final step (the paper's "
        "--foml-tail; none: the k-th mini-batch), maml's query set",
    )
    num_workers: int = Field(default=2, ge=1, le=256, description="Ray actors")
    gpus_per_worker: float = Field(
        default=0,
        ge=0,
        le=8,
        description="GPUs per actor: 0 runs on CPU; a fraction (0–1] shares one GPU; or a whole "
        "number of GPUs",
    )
    compile_inner_loop: bool = Field(
        default=False,
        description="torch.compile each actor's inner step: the same results, faster rounds "
        "after a compile on each actor's first round (for long jobs)",
    )
    execution: Execution = Field(
        default="auto",
        description="How rounds run: split (each round's tasks over the num_workers actors, the "
        "meta-update in the controller), in_actor (whole rounds in one actor, many per call, the "
        "others given back: for rounds too small to split), or auto (the faster of the two, "
        "measured on the job's first rounds). The same φ either way",
    )
    eval_every: int = Field(default=250, ge=0, le=1_000_000, description="Rounds between evals")
    eval_tasks: int = Field(default=32, ge=1, le=1000, description="Held-out tasks per eval")
    eval_steps: int = Field(default=32, ge=1, le=1000, description="Eval adaptation steps")
    checkpoint_every: int = Field(default=250, ge=1, le=1_000_000, description="Rounds/ckpt")

    # The most one round and one evaluation may cost, in examples × steps: a job never holds
    # the machine for long between two stop checks (a cancel acts at the end of a round).
    max_work: ClassVar[int] = 1_000_000
    # The most example-steps MAML's graph may hold at once (`maml_graph`), a few hundred MB:
    # docs/performance.md measures ~7 KB per example-step for the sine MLP, ~6 MB for Conv4.
    maml_max_graph: ClassVar[int] = 100_000

    @property
    def examples_per_task(self) -> int:
        """Labelled examples in one training task (what inner mini-batches are drawn from)."""
        raise NotImplementedError

    @property
    def classes_per_task(self) -> int:
        """How many classes a training task's `tail_shots` are taken from (sine: one)."""
        raise NotImplementedError

    @property
    def maml_graph(self) -> int:
        """Example-steps of the inner loops whose graph MAML holds at once: one task's (image
        families run tasks one by one), or a whole round's (sine stacks a chunk's tasks, and one
        actor may run them all)."""
        return self.inner_steps * self.inner_batch_size

    def eval_call_work(self) -> tuple[int, str]:
        """The example-steps of the largest piece of an evaluation that runs without a stop
        check, and what it is (for the message when it exceeds `max_work`)."""
        raise NotImplementedError

    def evaluation_metrics(self) -> set[str]:
        """The metrics each evaluation reports."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _consistent(self) -> "_JobSpecBase":
        self._algorithm_consistent()
        tail = (self.tail_shots or 0) * self.classes_per_task
        if self.inner_batch_size > self.examples_per_task - tail:
            held = f" less the {tail} of its tail" if tail else ""
            raise ValueError(
                f"inner_batch_size ({self.inner_batch_size}) cannot exceed the "
                f"{self.examples_per_task} examples of a training task{held}"
            )
        round_work = self.meta_batch_size * self.inner_steps * self.inner_batch_size
        if round_work > self.max_work:
            raise ValueError(
                f"a round of meta_batch_size × inner_steps × inner_batch_size = {round_work:,} "
                f"example-steps exceeds this service's limit of {self.max_work:,}"
            )
        eval_work, what = self.eval_call_work()
        if eval_work > self.max_work:
            raise ValueError(
                f"{what} = {eval_work:,} example-steps exceeds this service's limit of "
                f"{self.max_work:,}"
            )
        if self.gpus_per_worker > 1 and not self.gpus_per_worker.is_integer():
            raise ValueError(
                f"gpus_per_worker={self.gpus_per_worker:g}: above 1 it must be a whole number "
                "(Ray shares one GPU by fractions, never spreads an actor over two)"
            )
        if self.outer_lr_final > self.outer_lr:
            raise ValueError("outer_lr_final must not exceed outer_lr (ε only anneals down)")
        for field, value in self.model_dump().items():  # the MLflow params of the job's run
            if len(str(value)) > MAX_PARAM_VALUE_LENGTH:
                raise ValueError(
                    f"{field} takes {len(str(value)):,} characters as an MLflow param, over "
                    f"MLflow's limit of {MAX_PARAM_VALUE_LENGTH:,}"
                )
        return self

    def _algorithm_consistent(self) -> None:
        """What each algorithm needs and refuses, said before the job starts."""
        name, tail = self.algorithm, self.tail_shots
        shots = self.examples_per_task // self.classes_per_task
        if tail is not None and name == "reptile":
            raise ValueError("tail_shots is for fomaml and maml: Reptile trains on every example")
        if tail is not None and tail >= shots:
            raise ValueError(
                f"tail_shots ({tail}) must leave examples to train on: fewer than the {shots} "
                "per class (sine: points) of a training task"
            )
        if name == "fomaml" and tail is not None and self.inner_steps < 2:
            raise ValueError("fomaml with tail_shots needs inner_steps ≥ 2: k − 1, then the tail")
        if name != "maml":
            return
        if tail is None:
            raise ValueError("maml needs a query set: set tail_shots (examples held out per class)")
        if self.inner_optimizer != "sgd":
            raise ValueError(
                "maml differentiates through the inner optimiser: use inner_optimizer sgd (as "
                "MAML's paper); through Adam's 1/√v the float32 gradient is mostly rounding"
            )
        if self.compile_inner_loop:
            raise ValueError("maml builds its own differentiable step: compile_inner_loop false")
        if self.maml_graph > self.maml_max_graph:
            raise ValueError(
                f"maml holds the graph of {self.maml_graph:,} example-steps at once (inner_steps "
                f"× inner_batch_size{self._maml_graph_factor}), over this service's limit of "
                f"{self.maml_max_graph:,}: fewer inner steps or smaller batches"
            )

    _maml_graph_factor: ClassVar[str] = ""

    # The one place where the spec's fields become inner-loop configs (`reptile.inner`).
    def inner_config(self) -> "InnerConfig":
        """How a training task of a round is learnt: `inner_steps` mini-batches of
        `inner_batch_size`."""
        from reptile.inner import InnerConfig

        return InnerConfig(
            steps=self.inner_steps,
            lr=self.inner_lr,
            optimizer=self.inner_optimizer,
            batch_size=self.inner_batch_size,
        )

    def eval_config(self) -> "InnerConfig":
        """How a held-out task, or a user's task (an adaptation), is learnt: `eval_steps`
        full-batch steps on its few shots, with the training tasks' lr and optimiser."""
        from reptile.inner import InnerConfig

        return InnerConfig(steps=self.eval_steps, lr=self.inner_lr, optimizer=self.inner_optimizer)

    def algorithm_config(self) -> "AlgorithmConfig":
        """How a training task becomes its meta-gradient (`reptile.algorithms`)."""
        from reptile.algorithms import AlgorithmConfig

        return AlgorithmConfig(self.algorithm, self.tail_shots or 0)

    def meta_config(self) -> "MetaConfig":
        from reptile.meta import MetaConfig

        return MetaConfig(
            rounds=self.rounds,
            meta_batch_size=self.meta_batch_size,
            outer_lr=self.outer_lr,
            outer_lr_final=self.outer_lr_final,
            outer_optimizer=self.outer_optimizer,
            inner=self.inner_config(),
            algorithm=self.algorithm_config(),
        )


class SineJobSpec(_JobSpecBase):
    """Sine-wave regression.

    The defaults meta-train to a held-out 10-shot MSE far below a random initialisation's
    (docs/performance.md: quality, and the Reptile blog's serial example).
    """

    task: Literal["sine"] = Field(default="sine", description="Task family")
    shots: int = Field(default=50, ge=1, le=1000, description="Points per training task")
    eval_shots: int = Field(default=10, ge=1, le=1000, description="Shots per held-out task")

    _maml_graph_factor: ClassVar[str] = " × meta_batch_size"

    @property
    def examples_per_task(self) -> int:
        return self.shots

    @property
    def classes_per_task(self) -> int:
        return 1

    @property
    def maml_graph(self) -> int:
        return self.meta_batch_size * self.inner_steps * self.inner_batch_size

    def eval_call_work(self) -> tuple[int, str]:
        # every held-out task adapts at once, in the controller (one stacked inner loop)
        work = self.eval_tasks * self.eval_steps * self.eval_shots
        what = f"an evaluation of eval_tasks × eval_steps × {self.eval_shots} support examples"
        return work, what

    def task_options(self, dataset: str | None = None) -> dict[str, Any]:
        """Options of the task family (what an actor needs to rebuild tasks from seeds)."""
        return {"shots": self.shots, "eval_shots": self.eval_shots}

    def family(self, dataset: str | None = None) -> "SineFamily":
        """The job's task family (training and held-out tasks alike)."""
        from reptile.tasks.sine import SineFamily

        return SineFamily(**self.task_options())

    def eval_step_counts(self) -> list[int]:
        """Adaptation lengths scored at each evaluation: 1, k and eval_steps (and 0 = φ)."""
        return sorted({0, 1, self.inner_steps, self.eval_steps})

    def evaluation_metrics(self) -> set[str]:
        """The metrics each evaluation reports (`service.evaluation` names them so)."""
        counts = self.eval_step_counts()
        return {"eval_mse_before"} | {f"eval_mse_after_{k}" for k in counts if k > 0}


def accuracy_metric(ways: int, shots: int) -> str:
    """The name of the held-out `ways`-way `shots`-shot accuracy (its CI: the name + `_ci95`),
    for `service.evaluation.accuracy_metrics` and a sweep's metric alike."""
    return f"eval_acc_{ways}w{shots}s"


class _ImageJobSpec(_JobSpecBase):
    """N-way K-shot classification with Conv4, evaluated on held-out classes."""

    task: str  # each family's own name (a Literal there)
    data: str = Field(
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00]*$",  # no path holds a NUL character
        description="Data set path on the controller and worker machines (relative: to the "
        "service's data root)",
    )
    ways: int = Field(default=5, ge=2, le=MAX_WAYS, description="Classes per task (N)")
    shots: int = Field(default=10, ge=1, le=100, description="Images per class, training tasks")
    eval_shots: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default=[1, 5], min_length=1, max_length=4, description="K of the held-out K-shot evals"
    )
    queries: int = Field(default=5, ge=1, le=100, description="Query images per class in evals")
    held_out: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None,
        max_length=1000,
        description="Groups held out for evaluation (default: the family's)",
    )
    transductive: bool = Field(
        default=True,
        description="Evaluate with batch norm over the whole query set (the paper); false: "
        "the support set plus one query at a time",
    )
    inner_lr: FiniteFloat = Field(default=0.001, gt=0, le=100, description="Inner step size")
    inner_optimizer: Optimizer = Field(default="adam", description="Inner optimiser (β1 = 0)")
    outer_lr: FiniteFloat = Field(default=1.0, gt=0, le=100, description="ε at round 0")
    outer_optimizer: Optimizer = Field(default="sgd", description="Outer optimiser")
    meta_batch_size: int = Field(default=5, ge=1, le=1024, description="Tasks per round")
    eval_steps: int = Field(default=50, ge=1, le=1000, description="Eval adaptation steps")
    final_eval_tasks: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Most held-out tasks per setting in the final evaluation, drawn until the "
        "95 % CI half-width is at most 1 point",
    )
    final_ways: list[Annotated[int, Field(ge=2, le=MAX_WAYS)]] = Field(
        default=[5, 20],
        max_length=4,
        description="Ways the final evaluation scores beside the job's own, where the held-out "
        "classes suffice (default: the paper's 5 and 20; [] for the job's ways only)",
    )

    # a Conv4 step costs far more than an MLP step per example
    max_work: ClassVar[int] = 200_000
    eval_tasks_per_actor: ClassVar[int] = 25
    maml_max_graph: ClassVar[int] = 250  # Omniglot's 28×28 Conv4: ~6 MB an example-step

    @property
    def examples_per_task(self) -> int:
        return self.ways * self.shots

    @property
    def classes_per_task(self) -> int:
        return self.ways

    def eval_call_work(self) -> tuple[int, str]:
        # held-out tasks go to the actors in batches of at most `max_work` (`eval_batches`):
        # the largest piece is one task of the final evaluation's widest setting
        ways = max([self.ways, *self.final_ways])
        work = self.eval_steps * ways * max(self.eval_shots)
        return work, (
            f"one held-out task of eval_steps × {ways} ways × {max(self.eval_shots)} shots"
        )

    def eval_batches(self, ways: int, shots: int, tasks: int) -> int:
        """How many held-out tasks of `ways` × `shots` one evaluation call may hold: within
        `max_work`, and at most `eval_tasks_per_actor` a worker, since the pool retries a call
        that outlasts `round_timeout_s` and small tasks step far slower per example."""
        by_work = self.max_work // (self.eval_steps * ways * shots)
        return max(1, min(tasks, by_work, self.eval_tasks_per_actor * self.num_workers))

    def held_out_options(self, dataset: str, ways: int, shots: int) -> dict[str, Any]:
        """Family options of the held-out tasks of `ways` classes and `shots` support images
        (any `ways`: `reptile.tasks.fewshot.with_ways` fits φ's head to it)."""
        return {
            **self.task_options(dataset),
            "ways": ways,
            "split": "test",
            "eval_shots": shots,
        }

    def evaluation_metrics(self) -> set[str]:
        """The metrics every evaluation reports (`service.evaluation.accuracy_metrics` logs
        them): the job's own ways at each of `eval_shots`; the final one reports more."""
        names = {accuracy_metric(self.ways, k) for k in self.eval_shots}
        return names | {f"{name}_ci95" for name in names}

    def task_options(self, dataset: str | None = None) -> dict[str, Any]:
        """Family options; `dataset` is the prepared file made from `data` at submission."""
        if dataset is None:
            raise ValueError("image jobs need their prepared data set")
        options: dict[str, Any] = {
            "dataset": dataset,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
        }
        if self.held_out is not None:
            options["held_out"] = tuple(self.held_out)
        return options

    def family(self, dataset: str | None, *, held_out_shots: int | None = None) -> "FewShotFamily":
        """The job's task family on its prepared data set: the training classes, or with
        `held_out_shots` the held-out classes' tasks of that many shots."""
        from reptile.tasks import make_family
        from reptile.tasks.fewshot import FewShotFamily

        if held_out_shots is None:
            options = self.task_options(dataset)
        else:
            assert dataset is not None, "held-out tasks come from the prepared data set"
            options = self.held_out_options(dataset, self.ways, held_out_shots)
        family = make_family(self.task, **options)
        assert isinstance(family, FewShotFamily)
        return family


class OmniglotJobSpec(_ImageJobSpec):
    """Omniglot characters (28×28): held-out alphabets, rotations as extra training classes."""

    task: Literal["omniglot"] = Field(description="Task family")
    # 1000 rounds × 5 tasks, not the paper's 100,000: a default job that trains a usable
    # initialisation on a 2-core machine (docs/performance.md)
    rounds: int = Field(default=1000, ge=1, le=1_000_000, description="Meta-updates")
    eval_every: int = Field(default=1000, ge=0, le=1_000_000, description="Rounds between evals")
    eval_tasks: int = Field(default=50, ge=1, le=1000, description="Held-out tasks per eval")


class ImageFolderJobSpec(_ImageJobSpec):
    """A class-per-folder image set with train/ and test/ splits (Mini-ImageNet layout, 84×84)."""

    task: Literal["image_folder"] = Field(description="Task family")
    shots: int = Field(default=5, ge=1, le=100, description="Images per class, training tasks")
    rounds: int = Field(default=2000, ge=1, le=1_000_000, description="Meta-updates")
    maml_max_graph: ClassVar[int] = 60  # 84×84 images: ~4× Omniglot's memory an example-step
    eval_every: int = Field(default=1000, ge=0, le=1_000_000, description="Rounds between evals")


def _task_of(value: Any) -> str:
    """The discriminator: `task`, "sine" when absent."""
    if isinstance(value, dict):
        return str(value.get("task", "sine"))
    return str(getattr(value, "task", "sine"))


JobSpec = Annotated[
    Annotated[SineJobSpec, Tag("sine")]
    | Annotated[OmniglotJobSpec, Tag("omniglot")]
    | Annotated[ImageFolderJobSpec, Tag("image_folder")],
    Discriminator(_task_of),
]
ImageJobSpec = OmniglotJobSpec | ImageFolderJobSpec
AnyJobSpec = SineJobSpec | OmniglotJobSpec | ImageFolderJobSpec

_JOB_SPEC: TypeAdapter[AnyJobSpec] = TypeAdapter(JobSpec)


# versions count from 1; nine digits keep a version within the stores' integer columns
MODEL_URI_PATTERN = r"^models:/(?P<name>[^/@:]+)(?:/(?P<version>[0-9]{1,9})|@(?P<alias>[\w-]+))$"


def registered_model_name(spec: AnyJobSpec) -> str:
    """The MLflow registered model that the job's final φ becomes a version of."""
    return spec.model_name or f"reptile-{spec.task}"


def parse_spec(data: Any) -> AnyJobSpec:
    """Validate a job body (a dict from JSON or YAML) as the spec of its task family."""
    return _JOB_SPEC.validate_python(data)
