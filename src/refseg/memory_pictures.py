"""Picturing a memory file: finding each reference's image and mask again, then the memory picture.

A memory bank keeps features, not pictures. Its reference sources say where each came from,
and :func:`picture_references` follows them back to pixels; :func:`picture_memory` draws
:func:`refseg.viz.memory_picture` with the bank's own encoder input size and context ratio, so
the crops shown are the crops the bank encoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import InvalidInputError, RefsegError
from .masks import decode_mask, segmentation_to_mask
from .memory import MemoryBank, ReferenceRecord
from .models.base import Encoder
from .viz import PictureReference

logger = logging.getLogger(__name__)

#: ``prompt_to_mask(image (H, W, 3) uint8, box (x1, y1, x2, y2) or None, points ((x, y), ...) or None,
#: point_labels (1/0, ...) or None) -> (H, W) bool``: SAM2 from the prompts a reference recorded.
PromptToMask = Callable[..., np.ndarray]


@dataclass
class MemoryPicture:
    """What :func:`picture_memory` made: the picture, how many references it shows, and why
    each other reference is missing."""

    image: Image.Image
    pictured: int
    skipped: list[str]


def find_file(name: str | None, images_dir: Path | None) -> Path | None:
    """An existing file: ``name`` as given, else under ``images_dir`` (as is, then its base name)."""
    if not name:
        return None
    path = Path(name)
    if path.is_file():
        return path
    if images_dir is not None:
        for candidate in (images_dir / path, images_dir / path.name):
            if candidate.is_file():
                return candidate
    return None


def reference_mask(
    record: ReferenceRecord,
    image: np.ndarray,
    annotation: Mapping[str, Any] | None,
    prompt_to_mask: PromptToMask | None,
) -> np.ndarray:
    """The (H, W) bool mask of a reference from what its source recorded.

    In order: the mask the web app stored (``mask``), a mask file (``mask_file``), the COCO
    ``annotation`` (its segmentation, else its box), or the recorded prompts (``points`` with
    their ``point_labels``, and/or ``box``); prompts become a mask through ``prompt_to_mask``.

    Raises:
        InvalidInputError: nothing usable was recorded, or only prompts and no ``prompt_to_mask``.
    """
    from .data.coco import has_segmentation
    from .references import read_mask

    source = record.source
    height, width = image.shape[:2]
    if source.get("mask") is not None:
        return decode_mask(source["mask"], (height, width))
    if source.get("mask_file"):
        return decode_mask(read_mask(source["mask_file"]), (height, width))
    box, points, labels = source.get("box"), source.get("points"), source.get("point_labels")
    if annotation is not None:
        if has_segmentation(annotation):
            return segmentation_to_mask(annotation["segmentation"], height, width)
        if "bbox" in annotation:
            x, y, w, h = (float(v) for v in annotation["bbox"])
            box, points, labels = [x, y, x + w, y + h], None, None
    if box is not None or points is not None:
        if prompt_to_mask is None:
            raise InvalidInputError("only its prompts are known and SAM2 is not available to make the mask")
        if points is None:
            return prompt_to_mask(image, box)
        return prompt_to_mask(image, box, points, labels)
    raise InvalidInputError("its source records no mask, mask file, COCO annotation, box or points")


def picture_references(
    bank: MemoryBank,
    *,
    images_dir: str | os.PathLike | None = None,
    coco: Mapping[str, Any] | None = None,
    prompt_to_mask: PromptToMask | None = None,
    max_per_class: int | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[list[PictureReference], list[str]]:
    """Find each reference's image and mask again from the provenance the bank stored.

    The bank keeps features, not pictures; its reference sources say where they came from:
    ``file`` / ``file_name`` (image path, relative ones looked up under ``images_dir``), and
    ``mask`` (RLE or polygons, written by the web app), ``mask_file`` (folder references),
    ``annotation_id`` (found in ``coco``) or the prompts ``box`` / ``points`` (made into a
    mask by ``prompt_to_mask``).

    Args:
        max_per_class: at most this many positive references of each class, and as many
            negative ones (the first found).
        classes: only references of these classes (default: all, background negatives too).

    Returns:
        A :class:`~refseg.viz.PictureReference` (image (H, W, 3) uint8, mask (H, W) bool, class
        name, negative) per reference found, and one "why" line per reference skipped.
    """
    from .data.images import load_image

    folder = Path(images_dir) if images_dir is not None else None
    annotations = {a.get("id"): a for a in (coco or {}).get("annotations", [])}
    coco_images = {i.get("id"): i for i in (coco or {}).get("images", [])}
    found: list[PictureReference] = []
    skipped: list[str] = []
    per_class: dict[tuple[str | None, bool], int] = {}
    for record in bank.references:
        if classes is not None and record.class_name not in classes:
            continue
        kind = (record.class_name, record.negative)
        if max_per_class is not None and per_class.get(kind, 0) >= max_per_class:
            continue
        source = record.source
        name = source.get("file") or source.get("file_name")
        if not name and source.get("image_id") in coco_images:
            name = coco_images[source["image_id"]].get("file_name")
        path = find_file(name, folder)
        what = record.class_name if not record.negative else f"not {record.class_name or 'any class'}"
        label = f"reference {record.ref_id} ({what})"
        if path is None:
            where = f"{name!r} not found" if name else "no image file recorded"
            skipped.append(f"{label}: {where}; pass --images DIR")
            continue
        try:
            image = load_image(path)
            mask = reference_mask(record, image, annotations.get(source.get("annotation_id")), prompt_to_mask)
        except RefsegError as error:
            skipped.append(f"{label}: {error}")
            continue
        box = source.get("annotated_box")  # the crop's centre under the "research" convention
        found.append(PictureReference(image, mask, record.class_name, record.negative, box))
        per_class[kind] = per_class.get(kind, 0) + 1
    return found, skipped


def lazy_prompt_to_mask(load_proposer: Callable[[], Any], encoder: Encoder) -> PromptToMask:
    """A prompts -> mask function (:data:`PromptToMask`) that loads SAM2 (``load_proposer()``)
    on its first call only and answers as :meth:`refseg.Segmenter.reference_mask`."""
    segmenter: list[Any] = []

    def prompt_to_mask(
        image: np.ndarray,
        box: Sequence[float] | None,
        points: Sequence[Sequence[float]] | None = None,
        point_labels: Sequence[int] | None = None,
    ) -> np.ndarray:
        if not segmenter:
            from .segmenter import Segmenter

            segmenter.append(Segmenter(load_proposer(), encoder))
        return segmenter[0].reference_mask(image, box=box, points=points, point_labels=point_labels)

    return prompt_to_mask


def picture_memory(
    bank: MemoryBank,
    encoder: Encoder,
    *,
    images_dir: str | os.PathLike | None = None,
    coco: Mapping[str, Any] | None = None,
    prompt_to_mask: PromptToMask | None = None,
    classes: Sequence[str] | None = None,
    max_per_class: int | None = 8,
    tile_size: int = 128,
    on_skip: Callable[[str], None] | None = None,
) -> MemoryPicture:
    """The memory picture of a bank's references, cropped with the bank's context ratio;
    negative references framed in red, "not <class>" (:func:`refseg.viz.memory_picture`).

    Args:
        encoder: the bank's encoder (checked against the bank).
        classes: only these classes (default: all).
        on_skip: called with the "why" line of each reference that cannot be found again
            (default: logged).
        Others: as :func:`picture_references`.

    Raises:
        InvalidInputError: an empty bank, an unknown class, or no reference found again.
        EncoderMismatchError: ``encoder`` is not the bank's.
    """
    from .viz import memory_picture

    if len(bank) == 0:
        raise InvalidInputError("The memory holds no references: nothing to picture.")
    bank.check_encoder(encoder.identity)
    unknown = sorted(set(classes or []) - set(bank.class_names))
    if unknown:
        raise InvalidInputError(f"Unknown class(es) {unknown}; the memory holds: {bank.class_names}.")
    references, skipped = picture_references(
        bank,
        images_dir=images_dir,
        coco=coco,
        prompt_to_mask=prompt_to_mask,
        max_per_class=max_per_class,
        classes=classes,
    )
    for line in skipped:
        if on_skip is not None:
            on_skip(line)
        else:
            logger.info("skipped %s", line)
    if not references:
        raise InvalidInputError(
            f"None of the references' images and masks could be found ({len(skipped)} skipped): pass "
            "--images (and --coco for a memory built from a COCO json)."
        )
    image = memory_picture(
        encoder,
        references,
        context_ratio=bank.context_ratio,
        tile_size=tile_size,
        reference_crop=bank.reference_crop,
    )
    return MemoryPicture(image, len(references), skipped)
