"""PASCAL VOC (VOCdevkit layout) -> COCO json, boxes only.

A VOC root (``VOCdevkit/VOC2007``) holds ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``
and ``ImageSets/Main/<set>.txt`` (one image id per line). Several roots (VOC2007 + VOC2012
trainval, the few-shot reference pool) convert into one file.

Conventions:
- boxes: VOC pixel coordinates are 1-based and inclusive, so ``xmin..xmax`` becomes COCO
  ``x = xmin - 1``, ``w = xmax - xmin + 1`` (the same for y), the detectron2 convention;
- ``file_name`` is relative to the folder holding the roots (``VOCdevkit``), e.g.
  ``VOC2007/JPEGImages/000001.jpg``: pass :func:`voc_image_dir` as the image folder;
- image ids are 1, 2, ... in set-file order (roots in the order given); each image also keeps
  its ``voc_id`` and ``voc_root``;
- category ids are 1.. in the order of ``classes``; names keep the VOC spelling
  (``aeroplane``, ``tvmonitor``, ...; :func:`refseg.data.splits.resolve_classes` also accepts
  the COCO spelling);
- the masks of a box-only data set come from :func:`refseg.data.boxes.boxes_to_masks`.
"""

from __future__ import annotations

import difflib
import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from PIL import Image

from ..errors import InvalidInputError
from .splits import VOC_CLASSES, split_hint

logger = logging.getLogger(__name__)

DifficultPolicy = Literal["keep", "ignore", "drop"]


def voc_image_dir(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> Path:
    """The folder the ``file_name`` entries of :func:`voc_to_coco` are relative to (the roots' parent).

    Raises:
        InvalidInputError: the roots do not share one parent folder.
    """
    parents = {root.resolve().parent for root in _as_roots(roots)}
    if len(parents) != 1:
        raise InvalidInputError(
            f"The VOC roots lie in different folders ({', '.join(map(str, sorted(parents)))}); "
            "put them side by side in one VOCdevkit folder."
        )
    return parents.pop()


def voc_to_coco(
    roots: str | os.PathLike | Sequence[str | os.PathLike],
    image_set: str = "trainval",
    *,
    classes: Sequence[str] = VOC_CLASSES,
    difficult: DifficultPolicy = "keep",
) -> dict:
    """Convert VOC annotations to a COCO dict (boxes only).

    Args:
        roots: one VOC root (``.../VOCdevkit/VOC2007``) or several sharing a parent folder.
        image_set: the ``ImageSets/Main/<image_set>.txt`` list to convert (``trainval``,
            ``test``, ...).
        classes: the categories, in VOC spelling (objects of other classes are left out).
        difficult: objects marked difficult are ``"keep"``: ordinary annotations
            (``iscrowd`` 0) with ``"difficult": 1``; ``"ignore"``: ``iscrowd`` 1, so COCO
            evaluation neither rewards nor penalises detections of them (close to the VOC
            protocol); ``"drop"``: left out.

    Returns:
        A COCO dict (info, images, annotations, categories); each annotation has ``bbox``,
        ``area`` (box area), ``iscrowd``, ``difficult`` and no ``segmentation``.

    Raises:
        InvalidInputError: a missing root, set file or annotation file, unparseable xml, an
            image size that cannot be found, an unknown ``difficult`` policy, or a class that
            is neither a VOC class nor the name of an object of the set.
    """
    if difficult not in ("keep", "ignore", "drop"):
        raise InvalidInputError(f"difficult must be 'keep', 'ignore' or 'drop', got {difficult!r}.")
    root_list = _as_roots(roots)
    voc_image_dir(root_list)  # the roots must share a parent
    category_ids = {name: index + 1 for index, name in enumerate(classes)}
    images: list[dict] = []
    annotations: list[dict] = []
    skipped: Counter[str] = Counter()
    named: set[str] = set()  # every object name met, of any class
    for root in root_list:
        for voc_id in _read_image_set(root, image_set):
            record = _parse_annotation(root, voc_id)
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{root.name}/JPEGImages/{record['filename']}",
                    "width": record["width"],
                    "height": record["height"],
                    "voc_id": voc_id,
                    "voc_root": root.name,
                }
            )
            for obj in record["objects"]:
                named.add(obj["name"])
                if obj["name"] not in category_ids:
                    skipped[obj["name"]] += 1
                    continue
                if obj["difficult"] and difficult == "drop":
                    skipped["difficult"] += 1
                    continue
                xmin, ymin, xmax, ymax = obj["box"]
                width, height = xmax - xmin + 1.0, ymax - ymin + 1.0
                if width <= 0 or height <= 0:
                    logger.warning("%s/%s: empty box %s skipped", root.name, voc_id, obj["box"])
                    continue
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_ids[obj["name"]],
                        "bbox": [xmin - 1.0, ymin - 1.0, width, height],
                        "area": width * height,
                        "iscrowd": int(bool(obj["difficult"]) and difficult == "ignore"),
                        "difficult": int(obj["difficult"]),
                    }
                )
    _check_classes_met(classes, named, root_list, image_set)
    if skipped:
        logger.info("objects left out: %s", dict(skipped))
    return {
        "info": {
            "description": f"PASCAL VOC {'+'.join(r.name for r in root_list)} {image_set}, converted by refseg",
            "difficult": difficult,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": "voc"} for name, cid in category_ids.items()
        ],
    }


def _check_classes_met(classes: Sequence[str], named: set[str], roots: list[Path], image_set: str) -> None:
    """Refuse a class that is neither a VOC class nor the name of any object of the set (a typo
    such as ``dgo`` gave an empty category); warn about VOC classes with no object here.

    Raises:
        InvalidInputError: listing the names the set's objects have and the VOC classes.
    """
    missing = [name for name in classes if name not in named]
    unknown = [name for name in missing if name not in VOC_CLASSES]
    where = f"{'+'.join(r.name for r in roots)} {image_set}"
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(named | set(VOC_CLASSES)), n=2, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise InvalidInputError(
            f"Unknown class{'es' if len(unknown) > 1 else ''} {'; '.join(hints)}: no object of {where} is "
            f"named so. Its objects are named: {', '.join(sorted(named)) or 'nothing'}; the VOC classes are "
            f"{', '.join(VOC_CLASSES)}.{split_hint(unknown)}"
        )
    if missing:
        logger.warning("no object of %s in %s", ", ".join(missing), where)


def _as_roots(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    root_list = [Path(roots)] if isinstance(roots, str | os.PathLike) else [Path(r) for r in roots]
    if not root_list:
        raise InvalidInputError("No VOC root given.")
    for root in root_list:
        if not (root / "Annotations").is_dir():
            raise InvalidInputError(
                f"{root} is not a VOC root: expected {root / 'Annotations'} (pass e.g. VOCdevkit/VOC2007)."
            )
    return root_list


def _read_image_set(root: Path, image_set: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise InvalidInputError(
            f"Image set file not found: {path}. Available sets: {', '.join(available) or 'none'}."
        )
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _parse_annotation(root: Path, voc_id: str) -> dict:
    """filename, width, height and objects (name, difficult, 1-based inclusive box) of one xml."""
    path = root / "Annotations" / f"{voc_id}.xml"
    if not path.is_file():
        raise InvalidInputError(f"Annotation file not found: {path}")
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise InvalidInputError(f"Cannot parse {path}: {error}") from error
    filename = (tree.findtext("filename") or "").strip() or f"{voc_id}.jpg"
    try:
        width = int(float(tree.findtext("size/width") or 0))
        height = int(float(tree.findtext("size/height") or 0))
        if width <= 0 or height <= 0:
            width, height = _image_size(root / "JPEGImages" / filename, path)
        objects = []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            if box is None:
                raise InvalidInputError(f"{path}: an object has no bndbox.")
            objects.append(
                {
                    "name": (obj.findtext("name") or "").strip(),
                    "difficult": int(float(obj.findtext("difficult") or 0)),
                    "box": tuple(
                        float(box.findtext(tag) or "nan") for tag in ("xmin", "ymin", "xmax", "ymax")
                    ),
                }
            )
    except ValueError as error:
        raise InvalidInputError(f"{path}: bad number ({error}).") from error
    for obj in objects:
        if any(v != v for v in obj["box"]):  # NaN: a coordinate was missing
            raise InvalidInputError(f"{path}: an object's bndbox lacks xmin, ymin, xmax or ymax.")
    return {"filename": filename, "width": width, "height": height, "objects": objects}


def _image_size(image_path: Path, xml_path: Path) -> tuple[int, int]:
    """(width, height) from the image header, for an xml without a usable <size>."""
    try:
        with Image.open(image_path) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"{xml_path} has no <size> and its image cannot be read: {error}") from error
