"""COCO json input/output: robust loading, annotation -> mask, image iteration, atomic writes.

Masks are ``(H, W) bool`` numpy arrays; decoding and encoding COCO segmentations (polygons,
uncompressed and compressed RLE) is :mod:`refseg.masks`'s job.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..files import atomic_write
from ..masks import box_numbers, box_to_mask, segmentation_to_mask
from .images import load_image

logger = logging.getLogger(__name__)

REQUIRED_KEYS: tuple[str, ...] = ("images", "annotations", "categories")


def load_coco(
    path: str | os.PathLike, *, require: Sequence[str] = REQUIRED_KEYS, references: bool = False
) -> dict:
    """Read and check a COCO json file.

    Args:
        path: the json file.
        require: top-level keys that must be present (each must hold a list). Absent optional
            keys among ``images``/``annotations``/``categories`` are filled with ``[]``.
        references: the json of a memory's references (negative annotations allowed,
            :func:`check_coco`).

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
    except (OSError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: absurdly deep nesting
        raise InvalidInputError(f"Cannot read {path}: {type(error).__name__}: {error}") from error
    return check_coco(data, require=require, source=str(path), references=references)


def check_coco(
    data: Any,
    *,
    require: Sequence[str] = REQUIRED_KEYS,
    source: str = "COCO data",
    references: bool = False,
) -> dict:
    """Check the structure and field types of a COCO dict (in place: absent optional lists
    become ``[]``), so that nothing downstream meets a field of the wrong type.

    Checks: an object; the ``require`` keys are present; ``images``, ``annotations`` and
    ``categories`` are lists of objects;

    - images: ``id`` an integer (not a bool; ``3.0`` counts as 3), unique; ``width`` and
      ``height`` positive integers; ``file_name``, when present, a non-empty string (it is
      required where pixels are needed, by :func:`image_path`);
    - categories: ``id`` an integer, unique; ``name`` a non-empty string, unique (two
      categories of one name would give a memory the wrong category id);
    - annotations: ``image_id`` and ``category_id`` integers (with ``references=True``, the
      json of a memory's references, ``category_id`` may be null on a ``"negative": true``
      annotation: an example of no class; a ``negative`` that is not a boolean is skipped
      where the references are added); ``id``, when present, an integer, unique; ``iscrowd`` 0 or 1; ``bbox`` four finite numbers with width and
      height >= 0; ``area`` a finite number >= 0; ``segmentation`` a list or an object (its
      content is checked where it is decoded, :mod:`refseg.masks`).

    Raises:
        InvalidInputError: naming the first offending entry and field.
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
    _check_entries(data["annotations"], ("image_id", "category_id"), "annotation", source)
    check_images(data["images"], source)
    check_categories(data["categories"], source)
    _check_annotations(data["annotations"], source, references)
    return data


def _check_entries(entries: list, keys: Sequence[str], kind: str, source: str) -> None:
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{source}: {kind} #{index} is not an object.")
        missing = [key for key in keys if key not in entry]
        if missing:
            raise InvalidInputError(f"{source}: {kind} #{index} lacks {', '.join(map(repr, missing))}.")


def is_int(value: Any) -> bool:
    """An integer, or a float with an integer value (``3.0``); never a bool or a string."""
    kind = type(value)
    if kind is int:  # the common case first: millions of ids in a COCO file
        return True
    if kind is bool:
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:
        return math.isfinite(value)
    return isinstance(value, numbers.Real) and kind is not bool and math.isfinite(value)


def _box_size(bbox: Any) -> tuple[float, float]:
    """(w, h) of a COCO bbox of four finite numbers (:func:`refseg.masks.box_numbers`)."""
    if type(bbox) is list and len(bbox) == 4:
        x, y, w, h = bbox
        if all(type(v) is float or type(v) is int for v in bbox) and math.isfinite(x + y + w + h):
            return w, h
    return box_numbers(bbox)[2:]


def _bad(source: str, kind: str, index: int, entry: Mapping, key: str, wanted: str) -> InvalidInputError:
    name = f"{kind} #{index}" + (f" (id {entry['id']!r})" if "id" in entry and key != "id" else "")
    return InvalidInputError(f"{source}: {name}: {key!r} must be {wanted}, got {entry.get(key)!r}.")


def _unique(values: list, what: str, source: str) -> None:
    seen: set = set()
    for value in values:
        if value in seen:
            raise InvalidInputError(
                f"{source}: two {what} {value!r}; they must be unique (fix the file, e.g. renumber or merge them)."
            )
        seen.add(value)


def check_images(images: Any, source: str, *, sizes: bool = True, file_names: bool = False) -> list[dict]:
    """Check a COCO ``images`` list as :func:`check_coco` does.

    Args:
        sizes: ``width`` and ``height`` are required (else only checked when present).
        file_names: ``file_name`` is required (else only checked when present).

    Raises:
        InvalidInputError: not a list of objects, or a field of the wrong type, or two images
            with one id.
    """
    if not isinstance(images, list):
        raise InvalidInputError(f"{source}: 'images' must be a list, got {type(images).__name__}.")
    _check_entries(images, ("id",) + (("width", "height") if sizes else ()), "image", source)
    for index, image in enumerate(images):
        if not is_int(image["id"]):
            raise _bad(source, "image", index, image, "id", "an integer")
        for key in ("width", "height"):
            if key in image and (not is_int(image[key]) or image[key] <= 0):
                raise _bad(source, "image", index, image, key, "a positive integer")
        name = image.get("file_name")
        if (name is not None or file_names) and (not isinstance(name, str) or not name.strip()):
            raise _bad(source, "image", index, image, "file_name", "a non-empty string")
    _unique([int(image["id"]) for image in images], "images have the id", source)
    return images


def check_categories(categories: Any, source: str) -> list[dict]:
    """Check a COCO ``categories`` list as :func:`check_coco` does (integer ids and non-empty
    names, both unique).

    Raises:
        InvalidInputError: naming the first offending category.
    """
    if not isinstance(categories, list):
        raise InvalidInputError(f"{source}: 'categories' must be a list, got {type(categories).__name__}.")
    _check_entries(categories, ("id", "name"), "category", source)
    for index, category in enumerate(categories):
        if not is_int(category["id"]):
            raise _bad(source, "category", index, category, "id", "an integer")
        if not isinstance(category["name"], str) or not category["name"].strip():
            raise _bad(source, "category", index, category, "name", "a non-empty string")
    _unique([int(c["id"]) for c in categories], "categories have the id", source)
    _unique([c["name"] for c in categories], "categories have the name", source)
    return categories


def _check_annotations(annotations: list[dict], source: str, references: bool) -> None:
    ids = []
    for index, annotation in enumerate(annotations):
        if not is_int(annotation["image_id"]):
            raise _bad(source, "annotation", index, annotation, "image_id", "an integer")
        if references and annotation["category_id"] is None and annotation.get("negative") is True:
            pass  # a negative example of no class (a background negative)
        elif not is_int(annotation["category_id"]):
            raise _bad(source, "annotation", index, annotation, "category_id", "an integer")
        if "id" in annotation:
            if not is_int(annotation["id"]):
                raise _bad(source, "annotation", index, annotation, "id", "an integer")
            ids.append(int(annotation["id"]))
        if "iscrowd" in annotation and annotation["iscrowd"] not in (0, 1):  # True/False count as 1/0
            raise _bad(source, "annotation", index, annotation, "iscrowd", "0 or 1")
        if "bbox" in annotation:
            try:
                w, h = _box_size(annotation["bbox"])
            except InvalidInputError:
                raise _bad(source, "annotation", index, annotation, "bbox", "four finite numbers") from None
            if w < 0 or h < 0:
                raise _bad(source, "annotation", index, annotation, "bbox", "x, y, w, h with w, h >= 0")
        if "area" in annotation and (not _is_number(annotation["area"]) or annotation["area"] < 0):
            raise _bad(source, "annotation", index, annotation, "area", "a finite number >= 0")
        segmentation = annotation.get("segmentation")
        if segmentation is not None and not isinstance(segmentation, list | dict):
            raise _bad(source, "annotation", index, annotation, "segmentation", "polygons (a list) or an RLE")
    _unique(ids, "annotations have the id", source)


def category_ids_by_name(
    class_ids: Mapping[str, int], categories: Sequence[Mapping], source: str = "the COCO json"
) -> dict[str, int]:
    """The category id each class's results must carry on a COCO data set: the id of the
    data set's category of the same name.

    A memory built from a folder numbers its classes 1..K; a COCO data set has its own ids
    (7..9, say). Results written with the memory's ids would name categories the data set
    does not have, or the wrong ones. Classes are matched by name (exactly, else ignoring
    case, spaces, ``_`` and ``-``, and VOC/COCO spellings: :func:`refseg.data.splits.resolve_classes`).

    Args:
        class_ids: class name -> category id (``MemoryBank.category_ids``).
        categories: the data set's ``categories`` list; empty: ``class_ids`` is kept.

    Returns:
        class name -> the data set's category id.

    Raises:
        InvalidInputError: a class with no category of its name in the data set.
    """
    from .splits import resolve_classes

    if not categories:
        return dict(class_ids)
    exact = {str(c["name"]): int(c["id"]) for c in categories}
    mapped: dict[str, int] = {}
    unknown: list[str] = []
    for name in class_ids:
        if name in exact:
            mapped[name] = exact[name]
            continue
        try:
            mapped[name] = resolve_classes([name], categories)[0][1]
        except InvalidInputError:
            unknown.append(name)
    if unknown:
        shown = ", ".join(sorted(exact)[:30]) + (", ..." if len(exact) > 30 else "")
        raise InvalidInputError(
            f"The memory's class(es) {', '.join(map(repr, unknown))} are not categories of {source} "
            f"(its categories: {shown}), so results could not carry its category ids. Build the memory "
            "from references named as its categories (refseg sample + memory --refs, or reference "
            "folders named after them), or predict without --coco."
        )
    return mapped


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
        InvalidInputError: the image entry has no ``file_name`` (or not a non-empty string).
    """
    name = image_info.get("file_name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(
            f"Image {image_info.get('id', '?')} of the COCO file has no 'file_name' (a non-empty string)."
        )
    return Path(image_dir) / name


def iter_images(
    coco: Mapping,
    image_dir: str | os.PathLike,
    *,
    skip_unreadable: bool = True,
    errors: list[tuple[dict, str]] | None = None,
    skip_other_sizes: bool = False,
) -> Iterator[tuple[dict, np.ndarray]]:
    """The images of a COCO dict, in file order, loaded as (H, W, 3) uint8 RGB.

    An image whose loaded size differs from the json's ``width``/``height`` is yielded with a
    logged warning (annotations are in the json's frame), or skipped as unusable with
    ``skip_other_sizes``.

    Args:
        coco: a COCO dict (only ``images`` is used).
        image_dir: the folder ``file_name`` is relative to.
        skip_unreadable: log and skip unreadable or missing images; else raise.
        errors: if given, (image info, message) of every skipped image is appended to it, and
            the caller reports them: each skip is then logged at INFO, not WARNING, so that it
            is reported once.
        skip_other_sizes: skip (and report) an image whose size is not the json's.

    Yields:
        (image info dict, image array).

    Raises:
        InvalidInputError: an unreadable image when ``skip_unreadable`` is False.
    """
    level = logging.WARNING if errors is None else logging.INFO

    def skip(info: dict, message: str) -> None:
        logger.log(level, "skipping image %s: %s", info.get("id"), message)
        if errors is not None:
            errors.append((info, message))

    for info in coco["images"]:
        path = image_path(info, image_dir)
        try:
            image = load_image(path)
        except InvalidInputError as error:
            if not skip_unreadable:
                raise
            skip(info, str(error))
            continue
        expected = (int(info["height"]), int(info["width"]))
        if image.shape[:2] != expected:
            if skip_other_sizes:
                skip(
                    info,
                    f"the image is {image.shape[1]}x{image.shape[0]}, the json says {expected[1]}x{expected[0]}",
                )
                continue
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
