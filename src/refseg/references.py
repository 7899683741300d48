"""Building a memory bank from annotated references: a COCO json or a class-per-folder layout.

Both carry negative examples too: COCO annotations with ``"negative": true``, and the
``CLASS/negatives/`` and ``_background/`` folders of the layout. Positives are added first, so
that each negative finds its class. Unusable references (unreadable image, empty or mismatched
mask, crowd region, a negative of a class without positives) are skipped and reported, never
fatal.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data.images import list_images, load_image
from .errors import InvalidInputError
from .runner import progress_bar

logger = logging.getLogger(__name__)


class SupportsAddReference(Protocol):
    """What memory building needs from a segmenter (``refseg.Segmenter`` has it)."""

    memory: Any

    def add_reference(
        self,
        image: np.ndarray,
        class_name: str,
        *,
        mask: Any = None,
        box: Sequence[float] | None = None,
        source: dict | None = None,
    ) -> int:
        """Add one reference (``negative=True`` is passed only for negative ones, and then
        ``class_name`` may be None: a background negative)."""


def describe_source(source: Mapping[str, Any]) -> str:
    """A reference's provenance in words: ``train/a.jpg (annotation 12)``, ``refs/cat/a.jpg``."""
    name = source.get("file_name") or source.get("file")
    if not name and source.get("image_id") is not None:
        name = f"image {source['image_id']}"
    described = str(name or "a reference")
    if source.get("annotation_id") is not None:
        described += f" (annotation {source['annotation_id']})"
    return described


@dataclass
class MemoryBuildReport:
    """What a memory build did.

    Attributes:
        added: references added to the memory bank.
        skipped: ``{"source": {...}, "reason": str}`` of each reference that could not be used.
    """

    added: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def add_coco_references(
    segmenter: SupportsAddReference,
    coco: Mapping[str, Any],
    images_dir: str | os.PathLike,
    *,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
) -> MemoryBuildReport:
    """Add every annotation of a COCO dict (e.g. ``refseg sample`` output) to the memory bank.

    Annotations are taken in file order, positives first, then the negative ones (``"negative":
    true``: an example of what is not its category, or of no class when its ``category_id`` is
    null). An annotation with a ``segmentation`` gives its mask; a box-only one is
    turned into a mask by SAM2 from its box. Crowd regions, annotations on unknown or
    unreadable images, unusable masks and negatives of a class without positives are skipped
    and reported, never fatal. Each class present gets its COCO category id
    (``bank.set_category_id``).

    Args:
        segmenter: anything with ``add_reference`` and a ``memory`` bank.
        coco: a COCO dict with images, annotations and categories.
        images_dir: the folder the images' ``file_name`` are relative to.
        progress: show a tqdm progress bar.
        on_skip: called with ``file (annotation N): reason`` for each skipped reference
            (default: a logged warning), so each skip is reported once, where the caller wants.

    Raises:
        InvalidInputError: the COCO dict is malformed (:func:`refseg.data.coco.check_coco`).
    """
    from .data.coco import annotation_to_mask, check_coco, has_segmentation, image_path

    coco = check_coco(
        dict(coco), require=("annotations",), source="the references' COCO data", references=True
    )
    names = {int(c["id"]): str(c["name"]) for c in coco.get("categories", [])}
    images = {int(i["id"]): i for i in coco.get("images", [])}
    cached: tuple[int, np.ndarray] | None = None  # the last image read: annotations come grouped

    def add(annotation: Mapping[str, Any], image_id: int, info: Mapping[str, Any], source: dict) -> None:
        nonlocal cached
        negative = annotation.get("negative", False)
        if not isinstance(negative, bool):
            raise InvalidInputError(f'"negative" is {negative!r}: write true or false')
        kind = {"negative": True} if negative else {}  # a positive is added as before
        if negative and annotation.get("category_id") is None:
            name = None  # a background negative: an example of no class
        else:
            name = names.get(int(annotation["category_id"]))
            if name is None:
                raise InvalidInputError(f"unknown category id {annotation['category_id']}")
        if not info:
            raise InvalidInputError(f"image {image_id} is not in the json's images")
        if int(annotation.get("iscrowd", 0)):
            raise InvalidInputError("a crowd region is not one object")
        if cached is None or cached[0] != image_id:
            cached = (image_id, load_image(image_path(info, images_dir)))
        pixels = cached[1]
        if has_segmentation(annotation):
            mask = annotation_to_mask(annotation, *pixels.shape[:2])
            # the annotated box too: the research crop convention (paper) is centred on it
            annotated = annotation_box(annotation)
            segmenter.add_reference(pixels, name, mask=mask, box=annotated, source=source, **kind)
        elif "bbox" in annotation:
            x, y, w, h = (float(v) for v in annotation["bbox"])
            segmenter.add_reference(pixels, name, box=(x, y, x + w, y + h), source=source, **kind)
        else:
            raise InvalidInputError("the annotation has neither a segmentation nor a bbox")

    def jobs() -> Iterator[tuple[dict, Callable[[], None]]]:
        for annotation in annotations:
            image_id = int(annotation["image_id"])
            info = images.get(image_id, {})
            source = {
                "image_id": image_id,
                "annotation_id": annotation.get("id"),
                "file_name": info.get("file_name"),
            }
            yield source, functools.partial(add, annotation, image_id, info, source)

    annotations = list(coco.get("annotations", []))
    # positives first: a negative needs a positive of its class in the bank
    annotations = [a for a in annotations if not _is_negative(a)] + [
        a for a in annotations if _is_negative(a)
    ]
    report = _add_each(jobs(), len(annotations), progress, on_skip)
    _set_category_ids(segmenter.memory, {name: category_id for category_id, name in names.items()})
    return report


def annotation_box(annotation: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """A COCO annotation's ``bbox`` as (x1, y1, x1 + w, y1 + h), or None when it has none usable
    (not four finite numbers, or a negative size): a mask annotation is never refused for its box."""
    bbox = annotation.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not all(np.isfinite((x, y, w, h))) or w < 0 or h < 0:
        return None
    return x, y, x + w, y + h


def _is_negative(annotation: Any) -> bool:
    return isinstance(annotation, Mapping) and annotation.get("negative", False) is not False


def _report_skip(
    report: MemoryBuildReport, source: dict, reason: str, on_skip: Callable[[str], None] | None
) -> None:
    report.skipped.append({"source": source, "reason": reason})
    line = f"{describe_source(source)}: {reason}"
    if on_skip is None:
        logger.warning("Reference skipped: %s", line)
    else:
        on_skip(line)


def _add_each(
    jobs: Iterable[tuple[dict, Callable[[], None]]],
    total: int,
    progress: bool,
    on_skip: Callable[[str], None] | None,
    report: MemoryBuildReport | None = None,
) -> MemoryBuildReport:
    """Run each ``(source, add)`` job under a progress bar; a job that raises an
    InvalidInputError is skipped and reported once (``on_skip``, else a warning). Other
    RefsegErrors (SAM2's weights out of reach at its first use) stop the build."""
    report = report or MemoryBuildReport()
    bar = progress_bar(total, 0, enabled=progress, desc="memory", unit="ref")
    try:
        for source, add in jobs:
            try:
                add()
                report.added += 1
            except InvalidInputError as error:
                _report_skip(report, source, str(error), on_skip)
            bar.update(1)
    finally:
        bar.close()
    return report


def _set_category_ids(bank: Any, category_ids: Mapping[str, int]) -> None:
    """Give each class present in ``bank`` its category id."""
    for name, category_id in category_ids.items():
        if name in bank.class_names:
            bank.set_category_id(name, category_id)


MASK_SUFFIXES = (".mask", "_mask")
#: In a reference folder: the sub-folder of a class folder holding its negative examples.
NEGATIVES_FOLDER = "negatives"
#: In a reference folder: the top-level folder of negative examples of no class.
BACKGROUND_FOLDER = "_background"


def folder_references(folder: str | os.PathLike) -> tuple[list[tuple[str, Path, Path]], list[dict[str, Any]]]:
    """The (class name, image, mask) triples of a reference folder's positives, and the images
    without a mask.

    Layout: one sub-folder per class, named after the class; in it, each reference image
    ``x.jpg`` (any image format) sits beside its mask ``x.mask.png`` or ``x_mask.png``. The
    negative examples (:func:`folder_negatives`) are not listed here: ``CLASS/negatives/`` and
    ``_background/``.

    Raises:
        InvalidInputError: the folder does not exist or has no class sub-folder with images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"Reference folder not found: {root}")
    triples: list[tuple[str, Path, Path]] = []
    missing: list[dict[str, Any]] = []
    for class_dir in _class_folders(root):
        pairs, lonely = _image_mask_pairs(class_dir)
        triples += [(class_dir.name, image, mask) for image, mask in pairs]
        missing += lonely
    if not triples:
        raise InvalidInputError(
            f"No references in {root}: expected one sub-folder per class holding image + mask pairs "
            "(x.jpg with x.mask.png or x_mask.png)."
        )
    return triples, missing


def folder_negatives(
    folder: str | os.PathLike,
) -> tuple[list[tuple[str | None, Path, Path]], list[dict[str, Any]]]:
    """The negative examples of a reference folder: (class name, image, mask) triples, class None
    for those of no class, and the images without a mask.

    ``CLASS/negatives/`` holds image + mask pairs of what is NOT ``CLASS`` (laid out as the
    class folder itself); a top-level ``_background/`` holds pairs of things that are none of
    the classes. Both are optional.
    """
    root = Path(folder)
    triples: list[tuple[str | None, Path, Path]] = []
    missing: list[dict[str, Any]] = []
    places: list[tuple[str | None, Path]] = [(d.name, d / NEGATIVES_FOLDER) for d in _class_folders(root)]
    places.append((None, root / BACKGROUND_FOLDER))
    for class_name, directory in places:
        if directory.is_dir():
            pairs, lonely = _image_mask_pairs(directory)
            triples += [(class_name, image, mask) for image, mask in pairs]
            missing += lonely
    return triples, missing


def _class_folders(root: Path) -> list[Path]:
    """The class sub-folders of a reference folder, sorted by name (not hidden, not _background)."""
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != BACKGROUND_FOLDER
    )


def _image_mask_pairs(directory: Path) -> tuple[list[tuple[Path, Path]], list[dict[str, Any]]]:
    """(image, mask) pairs directly inside ``directory``, and a skip entry per image without a mask."""
    files = list_images(directory)
    by_name = {f.name: f for f in files}
    pairs: list[tuple[Path, Path]] = []
    missing: list[dict[str, Any]] = []
    for image in files:
        if image.stem.endswith(MASK_SUFFIXES):
            continue
        masks = [
            by_name[image.stem + suffix + extension]
            for suffix in MASK_SUFFIXES
            for extension in (".png", image.suffix)
            if image.stem + suffix + extension in by_name
        ]
        if masks:
            pairs.append((image, masks[0]))
        else:
            missing.append(
                {
                    "source": {"file": str(image)},
                    "reason": f"no mask {image.stem}.mask.png or {image.stem}_mask.png",
                }
            )
    return pairs, missing


def add_folder_references(
    segmenter: SupportsAddReference,
    folder: str | os.PathLike,
    *,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
) -> MemoryBuildReport:
    """Add the references of a class-per-sub-folder layout (:func:`folder_references`), then its
    negative examples (:func:`folder_negatives`).

    A mask is any image whose non-zero pixels (after conversion to grey; 0/1 or 0/255) mark the
    object. Class category ids are 1..K in sorted class-name order (classes with a positive
    reference). Unusable pairs, images without a mask, and negatives of a class without
    positives are skipped and reported as :func:`add_coco_references` says.
    """
    triples, missing = folder_references(folder)
    negatives, missing_negatives = folder_negatives(folder)

    def add(class_name: str | None, image: Path, mask_file: Path, source: dict, negative: bool) -> None:
        kind = {"negative": True} if negative else {}
        segmenter.add_reference(
            load_image(image), class_name, mask=read_mask(mask_file), source=source, **kind
        )

    def jobs() -> Iterator[tuple[dict, Callable[[], None]]]:
        for negative, listed in ((False, triples), (True, negatives)):
            for class_name, image, mask_file in listed:
                source = {"file": str(image), "mask_file": str(mask_file)}
                yield source, functools.partial(add, class_name, image, mask_file, source, negative)

    report = MemoryBuildReport()
    for item in missing + missing_negatives:
        _report_skip(report, item["source"], item["reason"], on_skip)
    _add_each(jobs(), len(triples) + len(negatives), progress, on_skip, report)
    classes = sorted({c for c, _, _ in triples})
    _set_category_ids(segmenter.memory, {name: index + 1 for index, name in enumerate(classes)})
    return report


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image as (H, W): bool for palette images (index > 0), else uint8 grey.

    A uint8 mask counts as 0/1 when its maximum is 1, else as 0/255 (threshold 127), as
    :func:`refseg.masks.decode_mask` reads it.

    Raises:
        InvalidInputError: the file cannot be read as an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened) or opened
            if image.mode == "P":
                return np.asarray(image) > 0
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidInputError(f"Cannot read mask {path}: {error}") from error
