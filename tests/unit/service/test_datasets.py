"""Raw image sets → prepared files: layouts, inversion, deduplication, cache, clear errors."""

import collections
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from reptile.tasks import make_family
from reptile.tasks.fewshot import IMAGES_FORMAT, FewShotFamily
from service.datasets import DatasetError, prepare_image_folder, prepare_omniglot
from tests.utils.images import (
    SPLIT_CLASSES,
    draw_character,
    image_folder_tree,
    omniglot_tree,
    zip_tree,
)

# ../shared/ beside the checkout (as on the developers' machines and in CI)
SHARED_OMNIGLOT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "omniglot"


def _load(path: Path) -> dict[str, Any]:
    record: dict[str, Any] = torch.load(path, weights_only=True)
    return record


def test_omniglot_tree_becomes_one_inverted_28px_file(tmp_path: Path) -> None:
    source = omniglot_tree(tmp_path / "raw", alphabets=3, characters=4, drawings=6)
    record = _load(prepare_omniglot(source, tmp_path / "cache"))
    assert record["format"] == IMAGES_FORMAT
    assert (record["image_size"], record["channels"]) == (28, 1)
    images, labels = record["images"], record["labels"]
    assert images.shape == (72, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.bincount().tolist() == [6] * 12
    assert record["classes"][:2] == ["Alphabet0/character01", "Alphabet0/character02"]
    assert record["groups"] == [f"Alphabet{a}" for a in range(3) for _ in range(4)]
    # Inverted: the white background is 0, black strokes are high.
    assert images[:, :, 0, 0].eq(0).all() and images.amax(dim=(1, 2, 3)).min() > 200
    assert images.float().mean() < 64
    # Each image is its own file, resized and inverted, under its own class.
    drawing = Image.open(source / "Alphabet1" / "character03" / "03_02.png").convert("L")
    expected = 255 - np.asarray(drawing.resize((28, 28), Image.Resampling.LANCZOS))
    first_of_class = int((labels == record["classes"].index("Alphabet1/character03")).nonzero()[0])
    assert torch.equal(images[first_of_class + 1, 0], torch.from_numpy(expected))


def test_prepared_file_is_reused_and_renamed_when_an_image_changes(tmp_path: Path) -> None:
    source = omniglot_tree(tmp_path / "raw", alphabets=2, characters=2, drawings=3)
    cache = tmp_path / "cache"
    path = prepare_omniglot(source, cache)
    written = path.stat().st_mtime_ns
    assert prepare_omniglot(source, cache) == path
    assert path.stat().st_mtime_ns == written  # not decoded nor written again
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary files left
    draw_character(source / "Alphabet1" / "character02" / "02_03.png", seed=999)
    changed = prepare_omniglot(source, cache)
    assert changed != path and changed.exists() and path.exists()


def test_omniglot_zips_and_nested_trees_give_the_same_file(tmp_path: Path) -> None:
    tree = omniglot_tree(tmp_path / "raw" / "images_background", alphabets=3, characters=2)
    reference = prepare_omniglot(tree, tmp_path / "cache")
    # One level deeper, and as two zips that share Alphabet1 (as Greek and Latin are shared).
    assert prepare_omniglot(tmp_path / "raw", tmp_path / "cache") == reference
    zips = tmp_path / "zips"
    zips.mkdir()
    for name, alphabets in [("small1", ["Alphabet0", "Alphabet1"]), ("small2", ["Alphabet1"])]:
        part = tmp_path / name / "images_background"
        for alphabet in alphabets:
            shutil.copytree(tree / alphabet, part / alphabet)
        zip_tree(part, zips / f"{name}.zip")
    shutil.copytree(tree / "Alphabet2", zips / "extracted" / "Alphabet2")  # trees beside zips
    assert prepare_omniglot(zips, tmp_path / "cache") == reference
    record = _load(reference)
    assert len(record["classes"]) == 6 and len(record["labels"]) == 36


def test_shared_omniglot_zips_hold_242_characters_once(tmp_path: Path) -> None:
    if not list(SHARED_OMNIGLOT.glob("images_background_small*.zip")):
        pytest.skip(f"the shared Omniglot zips are not in {SHARED_OMNIGLOT}")
    path = prepare_omniglot(SHARED_OMNIGLOT, tmp_path)
    record = _load(path)
    assert record["images"].shape == (4840, 1, 28, 28)
    assert len(record["classes"]) == len(set(record["classes"])) == 242
    assert record["labels"].bincount().tolist() == [20] * 242
    per_alphabet = collections.Counter(record["groups"])
    assert len(per_alphabet) == 8 and per_alphabet["Greek"] == 24 and per_alphabet["Latin"] == 26
    # The default held-out alphabets leave 178 training characters (×4 rotations) and 64 to test.
    train = make_family("omniglot", dataset=str(path), ways=20)
    test = make_family("omniglot", dataset=str(path), ways=20, split="test")
    assert isinstance(train, FewShotFamily) and isinstance(test, FewShotFamily)
    assert (train.num_classes, test.num_classes) == (178 * 4, 64)
    assert test.sample_eval_task(0).query.inputs.shape == (20 * 5, 1, 28, 28)


def test_image_folder_is_rgb_by_split(tmp_path: Path) -> None:
    source = image_folder_tree(tmp_path / "raw", images_per_class=4)
    (source / "README.txt").write_text("files beside the splits are ignored")
    record = _load(prepare_image_folder(source, tmp_path / "cache", image_size=20))
    assert record["images"].shape == (4 * sum(SPLIT_CLASSES.values()), 3, 20, 20)
    assert (record["image_size"], record["channels"]) == (20, 3)
    assert record["classes"][0] == "test/test_class0"
    assert collections.Counter(record["groups"]) == SPLIT_CLASSES
    red = record["images"][record["labels"] == record["classes"].index("train/train_class0")]
    centre = red[:, :, 10, 10].float()  # (4, 3): away from the white corner
    assert (centre[:, 0] > 200).all() and (centre[:, 1:] < 50).all()
    assert red[:, :, 0, 0].min() > 200  # the white corner survives resizing


def _bad_png(path: Path) -> None:
    path.write_bytes(b"not a png")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.write_text("x"), "is not a directory"),
        (lambda root: root.mkdir(), "no Omniglot images"),
        (lambda root: draw_character(root / "Alphabet0" / "a.png", 0), "<alphabet>/<character>/"),
        (
            lambda root: _bad_png(omniglot_tree(root, 1, 1, 2) / "Alphabet0/character01/x.png"),
            "cannot read image .*x.png",
        ),
        (lambda root: (root.mkdir(), (root / "a.zip").write_text("x")), "not a readable zip"),
    ],
)
def test_bad_omniglot_sources_are_clear_errors(tmp_path: Path, setup: Any, message: str) -> None:
    root = tmp_path / "raw"
    setup(root)
    with pytest.raises(DatasetError, match=message):
        prepare_omniglot(root, tmp_path / "cache")


def test_too_few_images_reports_the_class_and_where(tmp_path: Path) -> None:
    source = omniglot_tree(tmp_path / "raw", alphabets=1, characters=2, drawings=3)
    (source / "Alphabet0" / "character02" / "02_03.png").unlink()
    with pytest.raises(
        DatasetError,
        match=r"Alphabet0/character02 has 2 images in .*raw/Alphabet0/character02, fewer",
    ):
        prepare_omniglot(source, tmp_path / "cache", min_images=3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda root: shutil.rmtree(root / "test"), "lacks the test folder"),
        (lambda root: (root / "images").mkdir(), "unexpected folder .*images"),
        (lambda root: (root / "val" / "empty").mkdir(), "empty holds no .jpg"),
        (lambda root: (root / "train" / "train_class0" / "sub").mkdir(), "unexpected folder"),
        (lambda root: shutil.copy(root / "val/val_class0/0.jpg", root / "val"), "class folders"),
        (lambda root: _bad_png(root / "test" / "test_class1" / "9.png"), "cannot read image"),
    ],
)
def test_bad_image_folders_are_clear_errors(tmp_path: Path, change: Any, message: str) -> None:
    source = image_folder_tree(tmp_path / "raw", images_per_class=2)
    change(source)
    with pytest.raises(DatasetError, match=message):
        prepare_image_folder(source, tmp_path / "cache", image_size=16)


def test_image_size_too_small_for_conv4_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="image_size must be at least 16, got 8"):
        prepare_image_folder(image_folder_tree(tmp_path / "raw"), tmp_path / "cache", image_size=8)


def test_zip_members_outside_the_layout_are_errors(tmp_path: Path) -> None:
    (tmp_path / "zips").mkdir()
    draw_character(tmp_path / "loose.png", 0)
    with zipfile.ZipFile(tmp_path / "zips" / "flat.zip", "w") as opened:
        opened.write(tmp_path / "loose.png", "Alphabet0/loose.png")
    with pytest.raises(DatasetError, match=r"flat.zip::Alphabet0/loose.png"):
        prepare_omniglot(tmp_path / "zips", tmp_path / "cache")
