"""Few-shot image tasks: N-way K-shot shapes, shuffled labels, rotations, splits, and Conv4."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.func import functional_call, grad, vmap

from reptile.evaluate import accuracy
from reptile.inner import InnerConfig, InnerOptimizer, run_tasks
from reptile.models import Conv4
from reptile.params import init_params
from reptile.tasks import make_family, task_seeds
from reptile.tasks.fewshot import HEAD, MAX_WAYS, FewShotFamily, ImageSet, head_ways, with_ways

GROUPS, CLASSES_PER_GROUP, IMAGES_PER_CLASS, SIDE = 4, 5, 8, 16
Drawn = tuple[str, int, int]  # (class name, image index, quarter turns)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A prepared set of random 16×16 images: groups g0–g3 of 5 classes of 8 images each."""
    classes = GROUPS * CLASSES_PER_GROUP
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * IMAGES_PER_CLASS, 1, SIDE, SIDE), generator=generator)
    prepared = ImageSet(
        images=images.to(torch.uint8),
        labels=torch.arange(classes).repeat(IMAGES_PER_CLASS),  # classes interleaved
        classes=tuple(f"g{c // CLASSES_PER_GROUP}/c{c}" for c in range(classes)),
        groups=tuple(f"g{c // CLASSES_PER_GROUP}" for c in range(classes)),
    )
    path = tmp_path_factory.mktemp("fewshot") / "images.pt"
    torch.save(prepared.record(), path)
    return str(path)


def identify(dataset: str, images: torch.Tensor) -> list[Drawn]:
    """Which stored image, turned by how many quarter turns, each task image is."""
    record = torch.load(dataset, weights_only=True)
    known = {
        torch.rot90(image, turns, dims=(-2, -1)).numpy().tobytes(): (
            record["classes"][int(label)],
            index,
            turns,
        )
        for index, (image, label) in enumerate(zip(record["images"], record["labels"], strict=True))
        for turns in range(4)
    }
    pixels = (images * 255).round().to(torch.uint8)
    return [known[image.numpy().tobytes()] for image in pixels]


def test_training_task_is_ways_times_shots_with_one_class_per_label(dataset: str) -> None:
    family = FewShotFamily(dataset, ways=3, shots=4, held_out=("g3",))
    task = family.sample_task(11)
    assert task.inputs.shape == (12, 1, SIDE, SIDE) and task.inputs.dtype == torch.float32
    assert task.inputs.min() >= 0 and task.inputs.max() <= 1
    assert task.targets.dtype == torch.int64 and task.targets.bincount().tolist() == [4, 4, 4]
    drawn = identify(dataset, task.inputs)
    by_label = {
        label: {drawn[i][0] for i in range(12) if task.targets[i] == label} for label in range(3)
    }
    assert all(len(names) == 1 for names in by_label.values())  # one class per label
    assert len(set.union(*by_label.values())) == 3  # three distinct classes
    assert len({index for _, index, _ in drawn}) == 12  # distinct images


def test_eval_task_scores_other_images_of_the_same_classes(dataset: str) -> None:
    family = FewShotFamily(dataset, ways=4, eval_shots=2, queries=3, split="test", held_out=("g3",))
    task = family.sample_eval_task(5)
    assert task.support.inputs.shape == (8, 1, SIDE, SIDE) and task.support.targets.shape == (8,)
    assert task.query.inputs.shape == (12, 1, SIDE, SIDE)
    assert task.query.targets.bincount().tolist() == [3] * 4
    support = identify(dataset, task.support.inputs)
    query = identify(dataset, task.query.inputs)
    for label in range(4):
        support_classes = {support[i][0] for i in range(8) if task.support.targets[i] == label}
        query_classes = {query[i][0] for i in range(12) if task.query.targets[i] == label}
        assert len(support_classes) == 1 and support_classes == query_classes
    assert not {i for _, i, _ in support} & {i for _, i, _ in query}


def test_tasks_are_rebuilt_from_their_seed(dataset: str) -> None:
    family = FewShotFamily(dataset, held_out=("g3",), rotate=True)
    a, b, c = family.sample_task(7), family.sample_task(7), family.sample_task(8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    first, again = family.sample_eval_task(3), family.sample_eval_task(3)
    assert torch.equal(first.query.inputs, again.query.inputs)
    stacked = family.sample_tasks([7, 8])  # what a worker builds: the same tasks, stacked
    assert torch.equal(stacked.inputs, torch.stack([a.inputs, c.inputs]))
    assert torch.equal(stacked.targets, torch.stack([a.targets, c.targets]))


def test_labels_are_a_fresh_permutation_in_every_task(dataset: str) -> None:
    family = FewShotFamily(dataset, ways=5, shots=1, held_out=("g3",))
    labels_of: dict[str, set[int]] = {}
    for seed in range(60):
        task = family.sample_task(seed)
        for (name, _, _), label in zip(identify(dataset, task.inputs), task.targets, strict=True):
            labels_of.setdefault(name, set()).add(int(label))
    assert len(labels_of) == 15  # every training class was drawn
    assert all(len(labels) >= 3 for labels in labels_of.values())


def test_rotations_add_classes_to_the_training_split_only(dataset: str) -> None:
    train = FewShotFamily(dataset, ways=5, shots=2, held_out=("g3",), rotate=True)
    test = FewShotFamily(dataset, ways=5, shots=2, held_out=("g3",), rotate=True, split="test")
    assert (train.num_classes, test.num_classes) == (15 * 4, 5)
    # identify() matches rot90 of the stored images exactly, so these are true rotations.
    turns_seen = {
        t for s in range(30) for _, _, t in identify(dataset, train.sample_task(s).inputs)
    }
    assert turns_seen == {0, 1, 2, 3}
    test_drawn = [d for s in range(30) for d in identify(dataset, test.sample_task(s).inputs)]
    assert {t for _, _, t in test_drawn} == {0}


def _groups_drawn(dataset: str, family: FewShotFamily, tasks: int = 20) -> set[str]:
    drawn = [d for s in range(tasks) for d in identify(dataset, family.sample_task(s).inputs)]
    return {name.split("/")[0] for name, _, _ in drawn}


def test_train_and_test_splits_are_disjoint_by_group(dataset: str) -> None:
    options: dict[str, Any] = {"dataset": dataset, "ways": 5, "shots": 1, "held_out": ("g3", "g2")}
    assert _groups_drawn(dataset, FewShotFamily(**options)) == {"g0", "g1"}
    assert _groups_drawn(dataset, FewShotFamily(**options, split="test")) == {"g2", "g3"}
    # Image folders name their train split (train/), so val/ is never trained on.
    only = FewShotFamily(dataset, ways=5, shots=1, held_out=("g3",), train_groups=("g0",))
    assert _groups_drawn(dataset, only) == {"g0"}


def test_registry_builds_image_families_from_json_options(dataset: str) -> None:
    family = make_family("omniglot", dataset=dataset, ways=3, held_out=["g3"])
    assert isinstance(family, FewShotFamily) and family.name == "omniglot" and family.rotate
    assert family.held_out == ("g3",)
    model = family.make_model()
    task = family.sample_task(0)
    logits = model(task.inputs)
    assert logits.shape == (15, 3)
    assert family.loss(logits, task.targets).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, task.targets).item()
    )
    with pytest.raises(ValueError, match=r"held_out names groups \['test'\]"):
        make_family("image_folder", dataset=dataset)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ways": 6, "split": "test"}, "6-way tasks need 6 classes in the test split; it has 5"),
        ({"held_out": ("g9",)}, r"held_out names groups \['g9'\]"),
        ({"train_groups": ("g3",)}, "both held out and trained on"),
        ({"shots": 9}, "every class needs 9 images"),
        ({"eval_shots": 4, "queries": 5}, "every class needs 9 images"),
        ({"split": "val"}, "split must be 'train' or 'test'"),
        ({"ways": 0}, "ways must be at least 1"),
    ],
)
def test_impossible_options_are_clear_errors(
    dataset: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FewShotFamily(**{"dataset": dataset, "held_out": ("g3",), **options})


def test_a_file_that_is_not_a_prepared_set_is_a_clear_error(tmp_path: Path) -> None:
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a prepared image set"):
        FewShotFamily(str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="cannot read prepared image set"):
        FewShotFamily(str(tmp_path / "missing.pt"))


def test_conv4_shapes_follow_the_paper() -> None:
    omniglot = Conv4(ways=20)
    assert omniglot(torch.rand(7, 1, 28, 28)).shape == (7, 20)
    assert omniglot.head.in_features == 64  # 28 → 14 → 7 → 3 → 1
    mini = Conv4(ways=5, channels=3, image_size=84, filters=32)
    assert mini(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    assert mini.head.in_features == 32 * 5 * 5  # 84 → 42 → 21 → 10 → 5
    assert not list(omniglot.buffers())  # batch statistics only: a pure function of φ
    # batch norm cancels a conv bias (its gradient is zero), so the convolutions have none
    assert {f"features.{i}.0.bias" for i in range(4)}.isdisjoint(dict(omniglot.named_parameters()))


def test_conv4_gradients_vectorise_over_tasks(dataset: str) -> None:
    family = FewShotFamily(dataset, ways=3, shots=2, held_out=("g3",), rotate=True)
    model = family.make_model()
    phi = init_params(model, 0)
    tasks = [family.sample_task(seed) for seed in range(3)]
    inputs = torch.stack([t.inputs for t in tasks])  # (3, 6, 1, 16, 16)
    targets = torch.stack([t.targets for t in tasks])  # (3, 6)

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return family.loss(functional_call(model, params, (x,)), y)

    per_task_phi = {n: p.expand(3, *p.shape) for n, p in phi.items()}  # (3, *shape)
    batched = vmap(grad(loss))(per_task_phi, inputs, targets)
    for i, task in enumerate(tasks):
        single = grad(loss)(phi, task.inputs, task.targets)
        for name in phi:
            assert torch.allclose(batched[name][i], single[name], atol=1e-6), name


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_conv4_chunks_run_task_by_task_like_one_vmapped_loop(
    dataset: str, optimizer: InnerOptimizer
) -> None:
    options: dict[str, Any] = {"dataset": dataset, "ways": 3, "shots": 4, "held_out": ("g3",)}
    by_task, vmapped = FewShotFamily(**options), FewShotFamily(**options, batching="vmap")
    assert by_task.batching == "loop"  # the default for Conv4
    model = by_task.make_model()
    phi = init_params(model, 1)
    seeds = task_seeds(5, 0, 4)
    inner = InnerConfig(steps=3, batch_size=6, lr=0.01, optimizer=optimizer)
    result = run_tasks(by_task, model, phi, seeds, inner)
    expected = run_tasks(vmapped, model, phi, seeds, inner)
    for name in phi:
        assert torch.allclose(result.delta_sum[name], expected.delta_sum[name], atol=1e-5), name
    assert torch.allclose(result.loss_before, expected.loss_before, atol=1e-6)
    assert torch.allclose(result.loss_after, expected.loss_after, atol=1e-5)
    assert result.loss_after.mean() < result.loss_before.mean()


def test_conv4_cannot_take_stacked_weights(dataset: str) -> None:
    with pytest.raises(ValueError, match="batching must be 'vmap' or 'loop', not 'stacked'"):
        FewShotFamily(dataset=dataset, ways=3, shots=4, batching="stacked")


def test_accuracy_is_the_fraction_of_correct_argmaxes() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 0])).item() == 0.5


def test_a_head_for_other_ways_starts_every_class_at_the_trained_rows_mean() -> None:
    torch.manual_seed(0)
    phi = {n: p.detach() for n, p in Conv4(5, 1, 28).named_parameters()}
    assert with_ways(phi, 5) is phi  # the trained ways: the trained head, unchanged
    for ways in (2, 20, MAX_WAYS):
        resized = with_ways(phi, ways)
        assert head_ways(resized) == ways
        assert resized["head.weight"].shape == (ways, phi["head.weight"].shape[1])
        for name in HEAD:
            assert torch.equal(resized[name], phi[name].mean(0).expand_as(resized[name]))
        assert all(torch.equal(resized[n], phi[n]) for n in phi if n not in HEAD)
        model = Conv4(ways, 1, 28)
        logits = functional_call(model, resized, (torch.rand(3, 1, 28, 28),))
        assert torch.allclose(logits, logits[:, :1].expand_as(logits))  # no class favoured
    for ways in (1, MAX_WAYS + 1):
        with pytest.raises(ValueError, match=f"2 to {MAX_WAYS} classes, not {ways}"):
            with_ways(phi, ways)
