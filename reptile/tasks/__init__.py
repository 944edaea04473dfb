"""Task families by name: a new family is one module plus one line in `FAMILIES`."""

from typing import Any

from reptile.tasks.base import EvalTask, Task, TaskFamily, eval_task_seeds, task_seeds
from reptile.tasks.fewshot import ImageFolderFamily, OmniglotFamily
from reptile.tasks.sine import SineFamily

FAMILIES: dict[str, type] = {
    "sine": SineFamily,
    "omniglot": OmniglotFamily,
    "image_folder": ImageFolderFamily,
}


def make_family(name: str, **options: Any) -> TaskFamily:
    """Build the task family `name` with its options (for sine: `shots`, `eval_shots`).

    Image families take a prepared file, `dataset`, and the options of `FewShotFamily`.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known: {sorted(FAMILIES)}")
    family: TaskFamily = FAMILIES[name](**options)
    return family


__all__ = [
    "EvalTask",
    "FAMILIES",
    "Task",
    "TaskFamily",
    "eval_task_seeds",
    "make_family",
    "task_seeds",
]
