"""Tiny data sets generated on disk for tests: COCO json + images, PASCAL VOC layouts.

Images are small RGB pictures of textured shapes on a textured background; each class has
its own colour and stripe direction, so a class is recognisable from its texture. Every
annotation's mask is exact: polygon annotations are painted with the very mask pycocotools
rasterises from the polygon, RLE annotations with the mask they encode.

Main entry points:

- :func:`make_coco_dataset` writes ``root/annotations.json`` and ``root/images/*.png``;
- :func:`synthesize_coco` builds the same in memory (:class:`SyntheticCoco`: the COCO dict,
  the pixels and every annotation's true mask);
- :func:`make_voc_dataset` writes a ``VOCdevkit/VOC2007`` layout with known boxes.

Annotations carry an extra ``"synthetic"`` key telling what they are: ``"object"`` (a valid
reference: at least 32 px a side, at least 10 px from the border), ``"small"`` (under 32 px),
``"border"`` (touching the image border) or ``"crowd"`` (``iscrowd`` 1, uncompressed RLE).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

COCO_IDS = {
    "person": 1, "bicycle": 2, "car": 3, "motorcycle": 4, "airplane": 5, "bus": 6, "train": 7,
    "boat": 9, "bird": 16, "cat": 17, "dog": 18, "horse": 19, "sheep": 20, "cow": 21, "bottle": 44,
    "chair": 62, "couch": 63, "potted plant": 64, "dining table": 67, "tv": 72,
}  # fmt: skip


@dataclass
class SyntheticCoco:
    """A generated COCO data set held in memory.

    Attributes:
        coco: the COCO dict (images, annotations, categories).
        pixels: file_name -> (H, W, 3) uint8 image.
        masks: annotation id -> (H, W) bool true mask.
    """

    coco: dict
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)


def category_id(name: str, index: int) -> int:
    """The category id the generators give a class: its COCO id if it has one, else 100 + index."""
    return COCO_IDS.get(name, 100 + index)


def class_colour(index: int, n_classes: int) -> np.ndarray:
    """A saturated RGB colour per class, (3,) float in [0, 255]."""
    hue = (index / max(n_classes, 1)) % 1.0
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    rgb = 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)  # HSV -> RGB with S = V = 1
    return 40.0 + 200.0 * rgb


def textured_fill(height: int, width: int, index: int, n_classes: int) -> np.ndarray:
    """(H, W, 3) float texture of one class: its colour modulated by stripes at its own angle."""
    angle = np.pi * index / max(n_classes, 1)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * (2 * np.pi / (6.0 + 2.0 * (index % 3))))
    return class_colour(index, n_classes)[None, None, :] * (0.7 + 0.3 * stripes[..., None])


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float grey-brown background with low-frequency blotches and pixel noise."""
    coarse = rng.uniform(60, 140, size=(height // 16 + 2, width // 16 + 2, 1))
    upsampled = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    noise = rng.normal(0, 8, size=(height, width, 3))
    return np.clip(upsampled * np.array([1.0, 0.95, 0.85]) + noise, 0, 255)


def polygon_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask pycocotools rasterises from one polygon [x1, y1, x2, y2, ...]."""
    rle = mask_utils.frPyObjects([list(map(float, polygon))], height, width)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def ellipse_mask(cx: float, cy: float, rx: float, ry: float, height: int, width: int) -> np.ndarray:
    """(H, W) bool filled axis-aligned ellipse (pixel centres inside)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def star_polygon(cx: float, cy: float, radius: float, rng: np.random.Generator) -> list[float]:
    """A jittered convex-ish polygon (6-9 vertices) around (cx, cy), as a flat COCO list."""
    n = int(rng.integers(6, 10))
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    angles += rng.uniform(-0.25, 0.25, n) * (2 * np.pi / n)
    radii = radius * rng.uniform(0.8, 1.0, n)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in points.reshape(-1)]


def compressed_rle(mask: np.ndarray) -> dict:
    """Compressed RLE with a str ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Uncompressed RLE (``counts`` a list of run lengths, column-major), as COCO's crowd regions."""
    flat = mask.astype(np.uint8).reshape(-1, order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:  # counts start with a run of zeros
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def _free_spot(
    occupied: np.ndarray, size: int, margin: int, rng: np.random.Generator, tries: int = 200
) -> tuple[int, int] | None:
    """Top-left (x, y) of a size x size square at least ``margin`` px from the border and not
    overlapping ``occupied`` (with a 2 px gap), or None."""
    height, width = occupied.shape
    for _ in range(tries):
        x = int(rng.integers(margin, max(margin + 1, width - margin - size)))
        y = int(rng.integers(margin, max(margin + 1, height - margin - size)))
        if x + size > width - margin or y + size > height - margin:
            continue
        if not occupied[max(0, y - 2) : y + size + 2, max(0, x - 2) : x + size + 2].any():
            return x, y
    return None


def synthesize_coco(
    n_images: int = 4,
    classes: Sequence[str] = ("cat", "dog"),
    *,
    image_size: tuple[int, int] = (120, 160),
    objects_per_image: int = 2,
    object_size: tuple[int, int] = (42, 56),
    small: bool = True,
    border: bool = True,
    crowd: bool = True,
    seed: int = 0,
    image_format: str = "png",
    first_image_id: int = 1000,
) -> SyntheticCoco:
    """Build a tiny COCO data set in memory.

    Image i holds ``objects_per_image`` valid objects (classes cycling through ``classes``,
    starting at class i, so every class appears on about ``n_images * objects_per_image /
    len(classes)`` images); annotations alternate polygon / compressed RLE. Optionally each
    image also gets one small object (12-20 px), one object touching the border and one crowd
    region, all of the image's first class.

    Args:
        n_images: number of images.
        classes: class names (known COCO names get their COCO id, see :func:`category_id`).
        image_size: (height, width).
        objects_per_image: valid objects per image (fewer if they do not fit).
        object_size: (min, max) side in pixels of the valid objects (min >= 42 keeps their
            boxes at least 32 px a side).
        small, border, crowd: add those annotation kinds.
        seed: all randomness.
        image_format: file extension of ``file_name`` (``png`` is lossless).
        first_image_id: image ids are first_image_id, first_image_id + 1, ...

    Returns:
        The data set, its pixels and its true masks.
    """
    rng = np.random.default_rng(seed)
    height, width = image_size
    n_classes = len(classes)
    categories = [
        {"id": category_id(name, k), "name": name, "supercategory": "synthetic"}
        for k, name in enumerate(classes)
    ]
    data = SyntheticCoco(coco={"info": {"description": "refseg synthetic test set"}, "licenses": [],
                               "images": [], "annotations": [], "categories": categories})  # fmt: skip

    def add(
        image_id: int, class_index: int, mask: np.ndarray, segmentation: object, kind: str, iscrowd: int = 0
    ):
        annotation_id = len(data.coco["annotations"]) + 1
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        data.coco["annotations"].append(
            {
                "id": annotation_id,
                "image_id": image_id,
                "category_id": categories[class_index]["id"],
                "segmentation": segmentation,
                "area": float(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": iscrowd,
                "synthetic": kind,
            }
        )
        data.masks[annotation_id] = mask

    for i in range(n_images):
        image_id = first_image_id + i
        file_name = f"{i:06d}.{image_format}"
        pixels = background(height, width, rng)
        occupied = np.zeros((height, width), dtype=bool)
        painted: list[tuple[int, np.ndarray]] = []
        for j in range(objects_per_image):
            class_index = (i + j) % n_classes
            side = int(rng.integers(object_size[0], object_size[1] + 1))
            spot = _free_spot(occupied, side, 12, rng)
            if spot is None:
                continue
            x, y = spot
            if len(data.coco["annotations"]) % 2 == 0:
                for _ in range(20):  # a polygon whose box is at least 32 px a side
                    polygon = star_polygon(x + side / 2, y + side / 2, side / 2, rng)
                    mask = polygon_mask(polygon, height, width)
                    if mask.any(axis=0).sum() >= 32 and mask.any(axis=1).sum() >= 32:
                        break
                segmentation: object = [polygon]
            else:
                mask = ellipse_mask(x + side / 2, y + side / 2, side / 2, side / 2.5, height, width)
                segmentation = compressed_rle(mask)
            occupied |= mask
            add(image_id, class_index, mask, segmentation, "object")
            painted.append((class_index, mask))
        first = i % n_classes
        if small:
            side = int(rng.integers(12, 21))
            spot = _free_spot(occupied, side, 12, rng)
            if spot is not None:
                x, y = spot
                mask = np.zeros((height, width), dtype=bool)
                mask[y : y + side, x : x + side] = True
                occupied |= mask
                add(image_id, first, mask, compressed_rle(mask), "small")
                painted.append((first, mask))
        if border:  # a 36 px square against the left or right edge
            for _ in range(50):
                x = 0 if rng.uniform() < 0.5 else width - 36
                y = int(rng.integers(0, height - 36))
                mask = np.zeros((height, width), dtype=bool)
                mask[y : y + 36, x : x + 36] = True
                if not (mask & occupied).any():
                    occupied |= mask
                    square = [x, y, x + 36, y, x + 36, y + 36, x, y + 36]
                    add(image_id, first, mask, [[float(v) for v in square]], "border")
                    painted.append((first, mask))
                    break
        if crowd:
            mask = np.zeros((height, width), dtype=bool)
            for _ in range(3):
                cx, cy = rng.uniform(20, width - 20), rng.uniform(20, height - 20)
                mask |= ellipse_mask(cx, cy, 7, 5, height, width)
            mask &= ~occupied
            if mask.any():
                add(image_id, first, mask, uncompressed_rle(mask), "crowd", iscrowd=1)
                painted.append((first, mask))
        for class_index, mask in painted:
            pixels[mask] = textured_fill(height, width, class_index, n_classes)[mask]
        data.pixels[file_name] = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        data.coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    return data


def write_coco_dataset(
    data: SyntheticCoco, root: str | os.PathLike, *, json_name: str = "annotations.json"
) -> tuple[Path, Path]:
    """Write a :class:`SyntheticCoco` as ``root/<json_name>`` and ``root/images/<file_name>``."""
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for file_name, pixels in data.pixels.items():
        Image.fromarray(pixels).save(image_dir / file_name)
    json_path = root / json_name
    json_path.write_text(json.dumps(data.coco), encoding="utf-8")
    return json_path, image_dir


def make_coco_dataset(
    root: str | os.PathLike,
    n_images: int = 4,
    classes: Sequence[str] = ("cat", "dog"),
    **options: object,
) -> tuple[Path, Path]:
    """Generate a tiny COCO data set on disk (see :func:`synthesize_coco` for ``options``).

    Returns:
        (json path, image folder): ``root/annotations.json`` and ``root/images``.
    """
    return write_coco_dataset(synthesize_coco(n_images, classes, **options), root)  # type: ignore[arg-type]


@dataclass
class VocObject:
    """One object of a generated VOC image: class, 0-based box (x0, y0, x1, y1) with exclusive
    x1/y1 (pixels x0..x1-1 are covered), difficult flag."""

    name: str
    box: tuple[int, int, int, int]
    difficult: int


def make_voc_dataset(
    root: str | os.PathLike,
    n_images: int = 3,
    classes: Sequence[str] = ("dog", "cat", "sofa"),
    *,
    year: str = "VOC2007",
    image_set: str = "trainval",
    image_size: tuple[int, int] = (90, 120),
    first_index: int = 1,
    seed: int = 0,
) -> tuple[Path, dict[str, list[VocObject]]]:
    """Generate a VOCdevkit layout: ``root/VOCdevkit/<year>/{Annotations, JPEGImages,
    ImageSets/Main/<image_set>.txt}``.

    Image k (ids ``f"{first_index + k:06d}"``) holds two textured rectangles; every third object
    is marked difficult; the xml boxes are 1-based inclusive, as in VOC.

    Returns:
        (the VOC root ``root/VOCdevkit/<year>``, voc id -> its objects with 0-based boxes).
    """
    rng = np.random.default_rng(seed)
    voc_root = Path(root) / "VOCdevkit" / year
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc_root / sub).mkdir(parents=True, exist_ok=True)
    height, width = image_size
    truth: dict[str, list[VocObject]] = {}
    count = 0
    for k in range(n_images):
        voc_id = f"{first_index + k:06d}"
        pixels = background(height, width, rng)
        objects = []
        for j, x0 in enumerate((4, width // 2 + 4)):
            class_index = (k + j) % len(classes)
            w = int(rng.integers(20, width // 2 - 8))
            h = int(rng.integers(20, height - 10))
            y0 = int(rng.integers(0, height - h))
            box = (x0, y0, x0 + w, y0 + h)
            pixels[y0 : y0 + h, x0 : x0 + w] = textured_fill(height, width, class_index, len(classes))[
                y0 : y0 + h, x0 : x0 + w
            ]
            objects.append(VocObject(classes[class_index], box, int(count % 3 == 2)))
            count += 1
        truth[voc_id] = objects
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            voc_root / "JPEGImages" / f"{voc_id}.jpg"
        )
        xml_objects = "".join(
            f"<object><name>{escape(o.name)}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{o.difficult}</difficult><bndbox><xmin>{o.box[0] + 1}</xmin><ymin>{o.box[1] + 1}</ymin>"
            f"<xmax>{o.box[2]}</xmax><ymax>{o.box[3]}</ymax></bndbox></object>"
            for o in objects
        )
        (voc_root / "Annotations" / f"{voc_id}.xml").write_text(
            f"<annotation><folder>{year}</folder><filename>{voc_id}.jpg</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{xml_objects}</annotation>",
            encoding="utf-8",
        )
    set_file = voc_root / "ImageSets" / "Main" / f"{image_set}.txt"
    set_file.write_text("".join(f"{voc_id}\n" for voc_id in truth), encoding="utf-8")
    return voc_root, truth
