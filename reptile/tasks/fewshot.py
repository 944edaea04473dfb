"""N-way K-shot image classification over a prepared image set (Reptile paper, section 6.2).

The raw images (Omniglot, or any class-per-folder set such as Mini-ImageNet) are decoded once by
`service/datasets.py` into one file, a `torch.save`'d dict of weights-only-safe values:

    format       "reptile-images/1"
    images       uint8 (n, channels, size, size), 0..255 (Omniglot inverted: strokes high)
    labels       int64 (n,), each image's index into `classes`
    classes      list of str, "group/name" per class
    groups       list of str, each class's group: its alphabet (Omniglot) or split folder
    image_size   int
    channels     int

A task draws `ways` classes of one split and a few images of each. The train split is every
group not held out (or `train_groups` where given); the test split is the `held_out` groups.
"""

import functools
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reptile.models import Conv4
from reptile.params import Params
from reptile.tasks.base import Batching, EvalTask, Task, stack

IMAGES_FORMAT = "reptile-images/1"

# Two of the eight alphabets of the shared small Omniglot sets: 47 + 17 = 64 characters (26 %,
# close to the paper's 423 of 1,623), enough for 20-way tasks; the other 178 characters train.
OMNIGLOT_HELD_OUT = ("Japanese_(katakana)", "Tagalog")
QUARTER_TURNS = 4  # rotations by 0/90/180/270° make 4 classes of each training character
MAX_WAYS = 50  # the most classes a task, an adaptation or an evaluation may have
HEAD = ("head.weight", "head.bias")  # Conv4's classifier: one row per class


@dataclass(frozen=True)
class ImageSet:
    """A prepared few-shot image set: every image decoded once, labelled by class."""

    images: Tensor  # (n, channels, size, size) uint8
    labels: Tensor  # (n,) int64 index into `classes`
    classes: tuple[str, ...]  # "group/name"
    groups: tuple[str, ...]  # each class's group

    def record(self) -> dict[str, Any]:
        """The dict `torch.save` writes: tensors, lists, strs and ints only (weights_only-safe)."""
        return {
            "format": IMAGES_FORMAT,
            "images": self.images,
            "labels": self.labels,
            "classes": list(self.classes),
            "groups": list(self.groups),
            "image_size": self.images.shape[-1],
            "channels": self.images.shape[1],
        }


@functools.lru_cache(maxsize=4)
def load_images(path: str) -> ImageSet:
    """Read a prepared image set, once per process.

    The file is memory-mapped, so the Ray actors of one machine share its pages read-only.
    """
    try:
        record = torch.load(path, weights_only=True, mmap=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        raise ValueError(f"cannot read prepared image set {path}: {error}") from error
    if not isinstance(record, dict) or record.get("format") != IMAGES_FORMAT:
        raise ValueError(f"{path} is not a prepared image set ({IMAGES_FORMAT})")
    return ImageSet(
        images=record["images"],
        labels=record["labels"],
        classes=tuple(record["classes"]),
        groups=tuple(record["groups"]),
    )


@functools.lru_cache(maxsize=16)
def _class_members(path: str, classes: tuple[int, ...]) -> tuple[Tensor, ...]:
    """The indices of each class's images (ascending), computed once per process and split."""
    labels = load_images(path).labels
    return tuple(torch.nonzero(labels == c).flatten() for c in classes)


def fewshot_model(ways: int, channels: int, image_size: int) -> nn.Module:
    """Conv4 for `ways` classes; a function of the image geometry alone, so a registered model
    is rebuilt without its data set."""
    filters = 64 if image_size <= 28 else 32  # the paper's Omniglot / Mini-ImageNet widths
    return Conv4(ways, channels, image_size, filters)


def head_ways(phi: Params) -> int:
    """The number of classes φ's head scores."""
    return int(phi["head.bias"].shape[0])


def with_ways(phi: Params, ways: int) -> Params:
    """φ with a head for `ways` classes: unchanged for the ways it was trained with; else
    every row and bias the mean of the trained ones.

    Training tasks label their classes in a fresh random order (`FewShotFamily._draw`), so the
    trained rows are exchangeable and none belongs to a class: their mean is what they share.
    With equal rows every class starts at the same logit and the inner loop tells them apart
    (softmax ignores the shared part, so zero rows would adapt the same way).
    """
    if not 2 <= ways <= MAX_WAYS:
        raise ValueError(f"a task has 2 to {MAX_WAYS} classes, not {ways}")
    if head_ways(phi) == ways:
        return phi
    resized = dict(phi)
    for name in HEAD:
        mean = phi[name].mean(0, keepdim=True)  # (1, features) or (1,)
        resized[name] = mean.expand(ways, *mean.shape[1:]).clone()
    return resized


def fewshot_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(predictions, targets)


@dataclass(frozen=True)
class FewShotFamily:
    """`ways`-way classification tasks over the classes of one split of a prepared image set.

    Training tasks hold `shots` images per class; held-out tasks `eval_shots` to adapt on and
    `queries` other images of the same classes to score. `rotate` (train split only) adds each
    class turned by 90/180/270° as three more classes, as in the paper.
    """

    dataset: str  # path of the prepared file
    ways: int = 5  # classes per task
    shots: int = 5  # images per class of a training task: the inner loop's data
    queries: int = 5  # images per class scored in a held-out task
    eval_shots: int = 1  # images per class adapted on in a held-out task
    split: str = "train"  # "train" or "test"
    held_out: tuple[str, ...] = ()  # groups of the test split
    train_groups: tuple[str, ...] = ()  # groups of the train split; () = all not held out
    rotate: bool = False
    name: str = "fewshot"
    # Conv4: vmap's batching rules copy the stacked activations; task by task is faster on CPU
    batching: Batching = "loop"

    def __post_init__(self) -> None:
        # Options may come from JSON lists; tuples keep the family hashable.
        object.__setattr__(self, "held_out", tuple(self.held_out))
        object.__setattr__(self, "train_groups", tuple(self.train_groups))
        self._check()

    def _check(self) -> None:
        """Fail at construction, with what is wrong, rather than in the middle of a job."""
        if self.split not in ("train", "test"):
            raise ValueError(f"{self.name}: split must be 'train' or 'test', not {self.split!r}")
        if self.batching not in ("vmap", "loop"):  # Conv4 takes one task's weights at a time
            raise ValueError(
                f"{self.name}: batching must be 'vmap' or 'loop', not {self.batching!r}"
            )
        for option in ("ways", "shots", "queries", "eval_shots"):
            if getattr(self, option) < 1:
                raise ValueError(f"{self.name}: {option} must be at least 1")
        data = load_images(self.dataset)
        known = set(data.groups)
        for option in ("held_out", "train_groups"):
            unknown = sorted(set(getattr(self, option)) - known)
            if unknown:
                raise ValueError(
                    f"{self.name}: {option} names groups {unknown} that the data set lacks; "
                    f"it has {sorted(known)}"
                )
        if overlap := sorted(set(self.held_out) & set(self.train_groups)):
            raise ValueError(f"{self.name}: groups {overlap} are both held out and trained on")
        if self.num_classes < self.ways:
            raise ValueError(
                f"{self.name}: {self.ways}-way tasks need {self.ways} classes in the "
                f"{self.split} split; it has {self.num_classes}"
            )
        needed = max(self.shots, self.eval_shots + self.queries)
        classes = self._classes()
        members = _class_members(self.dataset, classes)
        short = [data.classes[c] for c, m in zip(classes, members, strict=True) if len(m) < needed]
        if short:
            raise ValueError(
                f"{self.name}: every class needs {needed} images (shots, or eval_shots + "
                f"queries); {len(short)} have fewer, e.g. {short[:3]}"
            )

    def _classes(self) -> tuple[int, ...]:
        """The class indices of this family's split."""
        groups = load_images(self.dataset).groups
        if self.split == "test":
            return tuple(c for c, g in enumerate(groups) if g in self.held_out)
        return tuple(
            c
            for c, g in enumerate(groups)
            if g not in self.held_out and (not self.train_groups or g in self.train_groups)
        )

    def _turns(self) -> int:
        """Quarter turns per class: rotations are augmentation, never applied to the test split."""
        return QUARTER_TURNS if self.rotate and self.split == "train" else 1

    def _draw(self, generator: torch.Generator, per_class: int) -> Tensor:
        """`per_class` distinct images of each of `ways` classes: (ways, per_class, C, H, W).

        Classes come out in random order and row i gets label i, so every task maps classes to
        labels by a fresh random permutation and the head cannot memorise classes.
        """
        data = load_images(self.dataset)
        members = _class_members(self.dataset, self._classes())
        turns = self._turns()
        rows = []
        order = torch.randperm(self.num_classes, generator=generator)
        for drawn in order[: self.ways].tolist():
            base, quarter_turns = divmod(drawn, turns)
            own = members[base]
            picks = own[torch.randperm(len(own), generator=generator)[:per_class]]
            images = data.images.index_select(0, picks)  # (per_class, C, H, W)
            rows.append(torch.rot90(images, quarter_turns, dims=(-2, -1)))
        return torch.stack(rows).float() / 255

    def _labels(self, per_class: int) -> Tensor:
        return torch.arange(self.ways).repeat_interleave(per_class)  # (ways * per_class,)

    @property
    def num_classes(self) -> int:
        """Classes tasks are drawn from: the split's, times 4 where rotations are added."""
        return len(self._classes()) * self._turns()

    @property
    def channels(self) -> int:
        return int(load_images(self.dataset).images.shape[1])

    @property
    def image_size(self) -> int:
        return int(load_images(self.dataset).images.shape[-1])

    def make_model(self) -> nn.Module:
        return fewshot_model(self.ways, self.channels, self.image_size)

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return fewshot_loss(predictions, targets)

    def stacked_gradient(
        self, weights: Params, inputs: Tensor, targets: Tensor
    ) -> tuple[Params, Tensor]:
        raise ValueError(f"{self.name}: Conv4 takes one task's weights at a time, never stacked")

    def tail_indices(self, tail_shots: int) -> Tensor:
        # a training task's images are class-major, `shots` per class (`sample_task`)
        if not 0 < tail_shots < self.shots:
            raise ValueError(f"tail_shots must be in 1..{self.shots - 1}, got {tail_shots}")
        last = torch.arange(self.shots - tail_shots, self.shots)
        return (torch.arange(self.ways).unsqueeze(1) * self.shots + last).flatten()

    def sample_task(self, seed: int) -> Task:
        images = self._draw(torch.Generator().manual_seed(seed), self.shots)
        return Task(inputs=images.flatten(0, 1), targets=self._labels(self.shots))

    def sample_tasks(self, seeds: list[int]) -> Task:
        return stack([self.sample_task(seed) for seed in seeds])

    def sample_eval_task(self, seed: int) -> EvalTask:
        images = self._draw(torch.Generator().manual_seed(seed), self.eval_shots + self.queries)
        support = images[:, : self.eval_shots].flatten(0, 1)  # (ways * eval_shots, C, H, W)
        query = images[:, self.eval_shots :].flatten(0, 1)  # (ways * queries, C, H, W)
        return EvalTask(
            support=Task(support, self._labels(self.eval_shots)),
            query=Task(query, self._labels(self.queries)),
        )


@dataclass(frozen=True)
class OmniglotFamily(FewShotFamily):
    """Omniglot: groups are alphabets; training characters also appear rotated (the paper)."""

    held_out: tuple[str, ...] = OMNIGLOT_HELD_OUT
    rotate: bool = True
    name: str = "omniglot"


@dataclass(frozen=True)
class ImageFolderFamily(FewShotFamily):
    """A class-per-folder set (Mini-ImageNet layout): groups are the split folders.

    Meta-training uses `train/`, held-out tasks `test/`; `val/` is kept for model selection.
    """

    held_out: tuple[str, ...] = ("test",)
    train_groups: tuple[str, ...] = ("train",)
    name: str = "image_folder"
