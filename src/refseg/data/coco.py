"""COCO json input/output: robust loading, annotation -> mask, image iteration, atomic writes.

Masks are ``(H, W) bool`` numpy arrays; decoding and encoding COCO segmentations (polygons,
uncompressed and compressed RLE) is :mod:`refseg.masks`'s job.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..files import atomic_write
from ..masks import box_to_mask, segmentation_to_mask
from .images import load_image

logger = logging.getLogger(__name__)

REQUIRED_KEYS: tuple[str, ...] = ("images", "annotations", "categories")


def load_coco(path: str | os.PathLike, *, require: Sequence[str] = REQUIRED_KEYS) -> dict:
    """Read and check a COCO json file.

    Args:
        path: the json file.
        require: top-level keys that must be present (each must hold a list). Absent optional
            keys among ``images``/``annotations``/``categories`` are filled with ``[]``.

    Returns:
        The parsed dict.

    Raises:
        InvalidInputError: missing file, invalid json, not an object, a required key missing,
            or malformed entries (see :func:`check_coco`).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"COCO json not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise InvalidInputError(
            f"{path} is not valid json (line {error.lineno}, column {error.colno}: {error.msg})."
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"Cannot read {path}: {error}") from error
    return check_coco(data, require=require, source=str(path))


def check_coco(data: Any, *, require: Sequence[str] = REQUIRED_KEYS, source: str = "COCO data") -> dict:
    """Check the structure of a COCO dict (in place: absent optional lists become ``[]``).

    Checks: an object; the ``require`` keys are present; ``images``, ``annotations`` and
    ``categories`` are lists; every image has an ``id``, ``width`` and ``height``; every
    category an ``id`` and ``name``; every annotation an ``image_id`` and ``category_id``.
    (``file_name`` is checked where pixels are needed, by :func:`image_path`.)

    Raises:
        InvalidInputError: naming the first offending key or entry.
    """
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: expected a json object with images/annotations/categories.")
    for key in REQUIRED_KEYS:
        if key not in data:
            if key in require:
                raise InvalidInputError(
                    f"{source}: missing the {key!r} key; a COCO file needs {', '.join(map(repr, require))}."
                )
            data[key] = []
        if not isinstance(data[key], list):
            raise InvalidInputError(f"{source}: {key!r} must be a list, got {type(data[key]).__name__}.")
    _check_entries(data["images"], ("id", "width", "height"), "image", source)
    _check_entries(data["categories"], ("id", "name"), "category", source)
    _check_entries(data["annotations"], ("image_id", "category_id"), "annotation", source)
    return data


def _check_entries(entries: list, keys: Sequence[str], kind: str, source: str) -> None:
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{source}: {kind} #{index} is not an object.")
        missing = [key for key in keys if key not in entry]
        if missing:
            raise InvalidInputError(f"{source}: {kind} #{index} lacks {', '.join(map(repr, missing))}.")


def category_names(coco: Mapping) -> dict[int, str]:
    """Category id -> name."""
    return {int(c["id"]): str(c["name"]) for c in coco["categories"]}


def annotations_by_image(coco: Mapping) -> dict[int, list[dict]]:
    """Image id -> its annotations, in file order (images without any map to ``[]``)."""
    grouped: dict[int, list[dict]] = {int(image["id"]): [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        grouped.setdefault(int(annotation["image_id"]), []).append(annotation)
    return grouped


def has_segmentation(annotation: Mapping) -> bool:
    """Whether an annotation carries a non-empty segmentation."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        return len(segmentation) > 0
    return isinstance(segmentation, Mapping) and "counts" in segmentation


def annotation_to_mask(
    annotation: Mapping, height: int, width: int, *, box_fallback: bool = False
) -> np.ndarray:
    """The (H, W) bool mask of one annotation.

    Args:
        annotation: a COCO annotation.
        height, width: its image's size.
        box_fallback: if the annotation has no segmentation, use its box instead of raising.

    Raises:
        InvalidInputError: no segmentation (and no fallback), or an undecodable one.
    """
    if has_segmentation(annotation):
        return segmentation_to_mask(annotation["segmentation"], height, width)
    if box_fallback and "bbox" in annotation:
        return box_to_mask(annotation["bbox"], height, width)
    raise InvalidInputError(
        f"Annotation {annotation.get('id', '?')} has no segmentation. For box-only data sets, "
        "make masks first (refseg.data.boxes.boxes_to_masks)."
    )


def image_path(image_info: Mapping, image_dir: str | os.PathLike) -> Path:
    """Where an image of a COCO file lies: ``image_dir / file_name``.

    Raises:
        InvalidInputError: the image entry has no ``file_name``.
    """
    if "file_name" not in image_info:
        raise InvalidInputError(f"Image {image_info.get('id', '?')} of the COCO file has no 'file_name'.")
    return Path(image_dir) / str(image_info["file_name"])


def iter_images(
    coco: Mapping,
    image_dir: str | os.PathLike,
    *,
    skip_unreadable: bool = True,
    errors: list[tuple[dict, str]] | None = None,
) -> Iterator[tuple[dict, np.ndarray]]:
    """The images of a COCO dict, in file order, loaded as (H, W, 3) uint8 RGB.

    An image whose loaded size differs from the json's ``width``/``height`` is yielded with a
    logged warning (annotations are in the json's frame).

    Args:
        coco: a COCO dict (only ``images`` is used).
        image_dir: the folder ``file_name`` is relative to.
        skip_unreadable: log and skip unreadable or missing images; else raise.
        errors: if given, (image info, message) of every skipped image is appended to it.

    Yields:
        (image info dict, image array).

    Raises:
        InvalidInputError: an unreadable image when ``skip_unreadable`` is False.
    """
    for info in coco["images"]:
        path = image_path(info, image_dir)
        try:
            image = load_image(path)
        except InvalidInputError as error:
            if not skip_unreadable:
                raise
            logger.warning("skipping image %s: %s", info.get("id"), error)
            if errors is not None:
                errors.append((info, str(error)))
            continue
        expected = (int(info["height"]), int(info["width"]))
        if image.shape[:2] != expected:
            logger.warning(
                "image %s is %dx%d (HxW) but the json says %dx%d", path, *image.shape[:2], *expected
            )
        yield info, image


def write_json(data: Any, path: str | os.PathLike, *, indent: int | None = None) -> Path:
    """Write json atomically (:func:`refseg.files.atomic_write`): a reader never sees a
    half-written file, an interrupted write leaves the old file, parent folders are created and
    the file gets the umask's permissions.

    Returns:
        The path written.

    Raises:
        OutputError: the file cannot be written (no space, no permission, ...).
    """

    def dump(temporary: Path) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=indent, default=_json_default)

    return atomic_write(path, dump)


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays and bytes, which json cannot write by itself."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
