"""The images of a run: :class:`Target` (path, stable name, image id) from files, folders,
globs or a COCO json, and the image ids of an images list."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.images import IMAGE_EXTENSIONS, list_images
from .errors import InvalidInputError

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Target:
    """One image to segment.

    Attributes:
        path: where the image file is.
        file_name: its stable name in the results (relative path; the key used by resume).
        image_id: its id in the results (COCO ``image_id``).
    """

    path: Path
    file_name: str
    image_id: int


def collect_targets(inputs: Sequence[str | os.PathLike]) -> list[Target]:
    """Image files from folders, glob patterns and file paths, with stable ids.

    A folder gives the images directly inside it (sorted by name); a glob (``imgs/**/*.jpg``,
    ``**`` recurses) gives its matching image files, sorted; a file is taken as is. Inputs keep
    their order, duplicates are dropped. ``file_name`` is the path relative to the folder (or
    the glob's fixed leading part); when two targets would share a name, every name becomes
    the path relative to the targets' common folder. Ids are 1..N in that order, so the same
    inputs always give the same ids.

    Raises:
        InvalidInputError: an input is neither a file, a folder nor a glob with matches, or no
            image was found at all.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found.extend((image, image.name) for image in list_images(path))
        elif path.is_file():
            found.append((path, path.name))
        elif any(char in text for char in _GLOB_CHARS):
            base = _glob_base(text)
            matches = sorted(
                Path(m)
                for m in glob.glob(text, recursive=True)
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTENSIONS
            )
            if not matches:
                raise InvalidInputError(f"No image file matches the pattern {text!r}.")
            found.extend((m, _relative_name(m, base)) for m in matches)
        else:
            raise InvalidInputError(f"No such image file or folder: {text}")
    unique: dict[Path, tuple[Path, str]] = {}
    for path, name in found:
        unique.setdefault(path.resolve(), (path, name))
    if not unique:
        raise InvalidInputError(f"No images found in: {', '.join(os.fspath(i) for i in inputs)}.")
    names = [name for _, name in unique.values()]
    if len(set(names)) != len(names):
        root = Path(os.path.commonpath([str(p.parent) for p in unique]))
        names = [p.relative_to(root).as_posix() for p in unique]
    return [
        Target(path, name, index + 1)
        for index, ((path, _), name) in enumerate(zip(unique.values(), names, strict=True))
    ]


def coco_targets(coco_json: str | os.PathLike, images_dir: str | os.PathLike) -> list[Target]:
    """The images of a COCO json (in the file's order), with their own ids.

    Raises:
        InvalidInputError: the json cannot be read, has no ``images`` list, or an image entry
            of the wrong shape (:func:`refseg.data.coco.check_images`: ids must be unique
            integers, every image needs a ``file_name``).
    """
    return coco_targets_and_categories(coco_json, images_dir)[0]


def coco_targets_and_categories(
    coco_json: str | os.PathLike, images_dir: str | os.PathLike
) -> tuple[list[Target], list[dict[str, Any]]]:
    """:func:`coco_targets` and the json's ``categories`` (checked; ``[]`` when it has none),
    read once: results on these images must carry these category ids."""
    from .data.coco import check_categories, check_images, image_path

    data = read_json(coco_json)
    if not isinstance(data, dict) or "images" not in data:
        raise InvalidInputError(f"{coco_json} is not a COCO json: it has no 'images' list.")
    images = check_images(data["images"], str(coco_json), sizes=False, file_names=True)
    categories = check_categories(data.get("categories", []), str(coco_json))
    root = Path(images_dir)
    if not root.is_dir():
        raise InvalidInputError(f"Images folder not found: {root}")
    targets = [Target(image_path(image, root), image["file_name"], int(image["id"])) for image in images]
    return targets, categories


def read_image_ids(path: str | os.PathLike) -> list[int]:
    """The image ids of a COCO-style images list (e.g. ``<results>.images.json``) or images file.

    Raises:
        InvalidInputError: an unreadable file, no ``images`` list, or an image without an integer id.
    """
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else data
    if not isinstance(images, list):
        raise InvalidInputError(f"{path} holds no images list.")
    try:
        return [int(image["id"]) for image in images]
    except (KeyError, TypeError, ValueError):
        raise InvalidInputError(f"{path}: every image needs an integer 'id'.") from None


def read_json(path: str | os.PathLike) -> Any:
    """A json file's content, or an InvalidInputError that names the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InvalidInputError(f"File not found: {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise InvalidInputError(f"Cannot read json file {path}: {error}") from error


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(char in part for char in _GLOB_CHARS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_name(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name
