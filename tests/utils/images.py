"""Tiny raw image sets drawn with PIL: an Omniglot-layout tree and a class-per-folder tree."""

import random
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

OMNIGLOT_SIDE = 105


def draw_character(path: Path, seed: int) -> None:
    """A 105×105 one-bit PNG like Omniglot's: a few black strokes on white."""
    rng = random.Random(seed)
    image = Image.new("1", (OMNIGLOT_SIDE, OMNIGLOT_SIDE), 1)
    pen = ImageDraw.Draw(image)
    for _ in range(3):
        points = [(rng.randrange(10, 95), rng.randrange(10, 95)) for _ in range(3)]
        pen.line(points, fill=0, width=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def omniglot_tree(
    root: Path, alphabets: int = 3, characters: int = 4, drawings: int = 6, first: int = 0
) -> Path:
    """`root/Alphabet<a>/character<c>/<c>_<d>.png`, alphabets numbered from `first`."""
    for a in range(first, first + alphabets):
        for c in range(1, characters + 1):
            for d in range(1, drawings + 1):
                path = root / f"Alphabet{a}" / f"character{c:02d}" / f"{c:02d}_{d:02d}.png"
                draw_character(path, seed=a * 10_000 + c * 100 + d)
    return root


def zip_tree(tree: Path, archive: Path) -> Path:
    """Zip `tree` under a top folder named after it, as the Omniglot zips are laid out."""
    with zipfile.ZipFile(archive, "w") as opened:
        for path in sorted(tree.rglob("*.png")):
            opened.write(path, Path(tree.name) / path.relative_to(tree))
    return archive


SPLIT_CLASSES = {"train": 3, "val": 2, "test": 2}
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def image_folder_tree(root: Path, images_per_class: int = 4) -> Path:
    """`root/<split>/class<k>/<i>.jpg|png`: RGB images of assorted sizes, one colour per class.

    Class k of every split is a flat COLOURS[k % 3] with a white square in one corner.
    """
    for split, count in SPLIT_CLASSES.items():
        for k in range(count):
            for i in range(images_per_class):
                size = (40 + 10 * i, 30 + 5 * k)
                image = Image.new("RGB", size, COLOURS[k % len(COLOURS)])
                ImageDraw.Draw(image).rectangle((0, 0, 8, 8), fill=(255, 255, 255))
                suffix = ".png" if i % 2 else ".jpg"
                path = root / split / f"{split}_class{k}" / f"{i}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
    return root


def learnable_omniglot_tree(
    root: Path, alphabets: int = 4, characters: int = 6, drawings: int = 6
) -> Path:
    """An Omniglot-layout tree whose drawings of one character share its strokes.

    Each character is three fixed random strokes; each drawing shifts them by a few pixels,
    so a model can tell characters apart (unlike `omniglot_tree`, whose drawings are noise).
    """
    for a in range(alphabets):
        for c in range(1, characters + 1):
            rng = random.Random(a * 1000 + c)
            strokes = [
                [(rng.randrange(15, 90), rng.randrange(15, 90)) for _ in range(3)] for _ in range(3)
            ]
            for d in range(1, drawings + 1):
                jitter = random.Random(a * 100_000 + c * 100 + d)
                dx, dy = jitter.randrange(-4, 5), jitter.randrange(-4, 5)
                image = Image.new("1", (OMNIGLOT_SIDE, OMNIGLOT_SIDE), 1)
                pen = ImageDraw.Draw(image)
                for stroke in strokes:
                    pen.line([(x + dx, y + dy) for x, y in stroke], fill=0, width=7)
                path = root / f"Alphabet{a}" / f"character{c:02d}" / f"{c:02d}_{d:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
    return root
