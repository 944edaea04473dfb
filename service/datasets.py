"""Raw few-shot image sets → one prepared file, decoded once and cached by content.

Task sampling must never decode image files, so every image of a data set is decoded, resized
and stored once as a uint8 tensor in a `torch.save` file (format in `reptile/tasks/fewshot.py`).
The file is named by a hash of the logical paths and bytes of the images and of the recipe,
so a changed data set (or a new recipe) gets a new file and an unchanged one is never decoded
again. Each call still reads and hashes the raw bytes, which is cheap next to decoding.

Two layouts:
- Omniglot: zips at the top of `source`, or a tree `<alphabet>/<character>/*.png` at any depth
  (`images_background/Greek/character01/…`, or several such top folders side by side).
  A character found in several places (Greek and Latin are in both small zips) counts once.
- Image folders (Mini-ImageNet): `train/`, `val/` (optional), `test/`, each `<class>/*.jpg|png`.
"""

import collections
import hashlib
import io
import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from reptile.tasks.fewshot import IMAGES_FORMAT, ImageSet
from service.files import atomic_write

log = logging.getLogger(__name__)

OMNIGLOT_SIZE = 28
MIN_IMAGE_SIZE = 16  # Conv4 halves the side four times
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
RESAMPLE = Image.Resampling.LANCZOS  # antialiased downsampling
MIN_SIDE, MAX_SIDE = 8, 4096  # what resizing to the data set's size sensibly handles
RECIPE_VERSION = 1  # bump when decoding changes, so old cache files are not reused


class DatasetError(ValueError):
    """A raw data set that cannot be prepared; the message says what is wrong and where."""


@dataclass(frozen=True)
class _Image:
    """One raw image: its class, where it came from, and its encoded bytes or file."""

    group: str
    name: str  # the class within its group
    file: str
    folder: str  # the class folder, for messages: a path, or archive.zip::member/folder
    data: Path | bytes

    @property
    def where(self) -> str:
        return f"{self.folder}/{self.file}"

    def read(self) -> bytes:
        return self.data if isinstance(self.data, bytes) else self.data.read_bytes()


def prepare_omniglot(source: Path, cache_dir: Path, *, min_images: int = 1) -> Path:
    """The prepared file of the Omniglot images under `source` (28×28, inverted: strokes 1.0).

    Classes are characters, grouped by alphabet. Writes the file into `cache_dir` unless an
    identical one is there already; raises DatasetError if the layout or an image is wrong, or a
    character has fewer than `min_images` drawings.
    """
    _check_directory(source)
    images = _omniglot_images(source)
    if not images:
        raise DatasetError(f"no Omniglot images (*.png, or zips of them) found under {source}")
    return _prepare(images, "omniglot", OMNIGLOT_SIZE, 1, cache_dir, min_images)


def prepare_image_folder(
    source: Path, cache_dir: Path, image_size: int = 84, *, min_images: int = 1
) -> Path:
    """The prepared file of a `train/ val/ test/` class-per-folder tree (RGB, resized square).

    Classes are the class folders, grouped by split. Writes the file into `cache_dir` unless an
    identical one is there already; raises DatasetError if the layout or an image is wrong, or a
    class has fewer than `min_images` images.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise DatasetError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    _check_directory(source)
    images = _folder_images(source)
    return _prepare(images, "image_folder", image_size, 3, cache_dir, min_images)


def _check_directory(source: Path) -> None:
    if not source.exists():
        raise DatasetError(f"data set path {source} does not exist")
    if not source.is_dir():
        raise DatasetError(f"data set path {source} is not a directory")


def _hidden(parts: Iterable[str]) -> bool:
    """Dot files and macOS archive metadata are not part of a data set."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _omniglot_images(source: Path) -> list[_Image]:
    """Every drawing in the zips and the tree under `source`, each character from one place."""
    found = []
    for archive in sorted(source.glob("*.zip")):
        try:
            with zipfile.ZipFile(archive) as opened:
                for member in sorted(opened.namelist()):
                    parts = PurePosixPath(member).parts
                    if parts[-1].lower().endswith(".png") and not _hidden(parts):
                        found.append(_omniglot_image(f"{archive}::", parts, opened.read(member)))
        except zipfile.BadZipFile as error:
            raise DatasetError(f"{archive} is not a readable zip file: {error}") from error
    for path in sorted(source.rglob("*")):
        parts = path.relative_to(source).parts
        if path.suffix.lower() == ".png" and path.is_file() and not _hidden(parts):
            found.append(_omniglot_image(f"{source}/", parts, path))
    first_folder: dict[tuple[str, str], str] = {}
    return [
        image
        for image in found
        if first_folder.setdefault((image.group, image.name), image.folder) == image.folder
    ]


def _omniglot_image(prefix: str, parts: tuple[str, ...], data: Path | bytes) -> _Image:
    """The image at `parts` (below a zip's root or `source`), classed by its last two folders."""
    if len(parts) < 3:
        raise DatasetError(
            f"{prefix}{'/'.join(parts)}: Omniglot images must lie in <alphabet>/<character>/ "
            "folders"
        )
    alphabet, character, file = parts[-3:]
    folder = prefix + "/".join(parts[:-1])
    return _Image(group=alphabet, name=character, file=file, folder=folder, data=data)


def _folder_images(source: Path) -> list[_Image]:
    """Every image of a `<split>/<class>/<image>` tree, checking the layout as it goes."""
    entries = [p for p in sorted(source.iterdir()) if not _hidden([p.name])]
    for path in entries:
        if path.is_dir() and path.name not in SPLITS:
            raise DatasetError(
                f"unexpected folder {path}: an image folder data set holds only train/, val/ "
                "and test/ folders of class folders"
            )
    splits = [p.name for p in entries if p.is_dir()]
    if missing := [s for s in ("train", "test") if s not in splits]:
        raise DatasetError(f"{source} lacks the {' and '.join(missing)} folder(s)")
    images = []
    for split in splits:
        classes = [p for p in sorted((source / split).iterdir()) if not _hidden([p.name])]
        if not any(p.is_dir() for p in classes):
            raise DatasetError(f"{source / split} holds no class folders")
        for folder in classes:
            if not folder.is_dir():
                if folder.suffix.lower() in IMAGE_SUFFIXES:
                    raise DatasetError(f"{folder}: images must lie in class folders")
                continue
            files = [p for p in sorted(folder.iterdir()) if not _hidden([p.name])]
            if nested := [p for p in files if p.is_dir()]:
                raise DatasetError(f"unexpected folder {nested[0]}: class folders hold images")
            found = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise DatasetError(f"class folder {folder} holds no .jpg/.jpeg/.png images")
            images += [
                _Image(group=split, name=folder.name, file=p.name, folder=str(folder), data=p)
                for p in found
            ]
    return images


def _prepare(
    images: list[_Image],
    kind: str,
    image_size: int,
    channels: int,
    cache_dir: Path,
    min_images: int,
) -> Path:
    """Check the classes, then decode and write them unless the cache holds them already."""
    images = sorted(images, key=lambda i: (i.group, i.name, i.file))
    counts = collections.Counter((i.group, i.name) for i in images)
    classes = sorted(counts)
    for (group, name), count in counts.items():
        if count < min_images:
            folder = next(i.folder for i in images if (i.group, i.name) == (group, name))
            raise DatasetError(
                f"class {group}/{name} has {count} images in {folder}, fewer than the "
                f"{min_images} needed"
            )
    path = cache_dir / f"{kind}-{_content_hash(images, kind, image_size)}.pt"
    if path.exists():
        return path
    index = {c: k for k, c in enumerate(classes)}
    pixels = np.empty((len(images), channels, image_size, image_size), dtype=np.uint8)
    for row, image in enumerate(images):
        pixels[row] = _decode(image, image_size, channels, invert=kind == "omniglot")
    prepared = ImageSet(
        images=torch.from_numpy(pixels),
        labels=torch.tensor([index[i.group, i.name] for i in images], dtype=torch.int64),
        classes=tuple(f"{g}/{n}" for g, n in classes),
        groups=tuple(g for g, _ in classes),
    )
    buffer = io.BytesIO()
    torch.save(prepared.record(), buffer)
    atomic_write(path, buffer.getvalue())
    log.info("prepared %d images of %d classes into %s", len(images), len(classes), path)
    return path


def _content_hash(images: list[_Image], kind: str, image_size: int) -> str:
    """SHA-256 of the recipe and of every image's logical path and bytes, in sorted order."""
    digest = hashlib.sha256(f"{IMAGES_FORMAT}|{kind}|{image_size}|{RECIPE_VERSION}".encode())
    for image in images:
        data = image.read()
        digest.update(f"\n{image.group}/{image.name}/{image.file}:{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()[:24]


def _decode(image: _Image, image_size: int, channels: int, invert: bool) -> np.ndarray:
    """One image of a data set as uint8 (channels, image_size, image_size)."""
    return decode_image(image.read(), image_size, channels, invert=invert, where=image.where)


def decode_image(
    data: bytes, image_size: int, channels: int, *, invert: bool, where: str
) -> np.ndarray:
    """Encoded PNG/JPEG bytes as uint8 (channels, image_size, image_size), as the data set's.

    `invert` is Omniglot's: black strokes on white become high strokes on 0. Raises
    `DatasetError` naming `where` for bytes that are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if not MIN_SIDE <= min(opened.size) <= max(opened.size) <= MAX_SIDE:
                width, height = opened.size
                raise DatasetError(
                    f"image {where} is {width}×{height}; sides must be {MIN_SIDE}–{MAX_SIDE} px"
                )
            mode = "L" if channels == 1 else "RGB"
            resized = opened.convert(mode).resize((image_size, image_size), RESAMPLE)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {where}: {error}") from error
    array = np.asarray(resized, dtype=np.uint8).reshape(image_size, image_size, channels)
    if invert:
        array = 255 - array
    return array.transpose(2, 0, 1)
