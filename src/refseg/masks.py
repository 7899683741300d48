"""Instance masks: reading every form refseg accepts, RLE encoding, and boxes of masks.

A mask in refseg is an ``(H, W) bool`` numpy array. :func:`decode_mask` reads it from:

- an array (numpy, torch, PIL): bool, 0/1, or 0/255 (a uint8 array whose maximum is above 1 is
  thresholded at 127); ``(H, W)`` or ``(H, W, C)`` (first channel);
- COCO polygons: ``[[x1, y1, x2, y2, ...], ...]``;
- an uncompressed RLE: ``{"size": [H, W], "counts": [int, ...]}`` (COCO's crowd regions);
- a compressed RLE: ``{"size": [H, W], "counts": str | bytes}``.

**Degenerate polygons** (one policy for every reader): a polygon of fewer than 3 points (6
numbers) or of an odd count of numbers draws nothing. It is dropped with a logged note
(pycocotools would otherwise read a 4-number list as a box, and refuse an odd count with a
bare ``Exception``). A list whose polygons are all degenerate decodes to an empty mask; code
that needs an object (a reference) then refuses it as an empty mask. An empty list ``[]``
holds no polygon at all and is refused. :func:`is_clean_polygon_list` says whether a
segmentation can go to pycocotools as it is.

**Refused before pycocotools sees them**, because its C code would hang, exhaust memory or
read past a buffer: polygon coordinates that are not finite numbers or lie far outside the
image (more than twice its size away), and RLEs whose run lengths are negative, malformed or
do not add up to H x W.

Masks refseg writes are compressed RLE with a utf-8 ``counts`` string (:func:`mask_to_rle`),
so they are json-safe.

**Box conventions**: each function names its own.

- *exclusive* (pixel edges): x2 = last column + 1, y2 = last row + 1, so x2 - x1 is the width
  in pixels. :class:`~refseg.Instances` boxes, COCO ``bbox`` (x, y, w, h) and references use it.
- *inclusive* (pixel indices): x2 = last column, y2 = last row, as torchvision's
  ``masks_to_boxes``. Only the class-wise NMS uses it, so it keeps the paper's exact numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

MaskLike = np.ndarray | list | dict


# --------------------------------------------------------------------------- decode


def decode_mask(mask: MaskLike, image_hw: tuple[int, int]) -> np.ndarray:
    """Any mask form of the module docstring as an ``(H, W)`` bool array.

    Args:
        mask: an array, COCO polygons, or an uncompressed or compressed RLE.
        image_hw: (height, width) of the image the mask belongs to.

    Raises:
        InvalidInputError: a shape or RLE size other than ``image_hw``, an empty polygon
            list, or something that is not a mask.
    """
    height, width = image_hw
    if isinstance(mask, list | dict):
        return segmentation_to_mask(mask, height, width)
    array = np.asarray(mask)  # numpy, torch, PIL
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., 0]
    if array.shape != (height, width):
        raise InvalidInputError(f"Mask shape {array.shape} does not match image size {(height, width)}.")
    return array > (127 if array.dtype == np.uint8 and array.max(initial=0) > 1 else 0)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as an (H, W) bool mask.

    Raises:
        InvalidInputError: as :func:`segmentation_to_rle`, or an RLE pycocotools cannot decode.
    """
    rle = segmentation_to_rle(segmentation, height, width)
    try:
        mask = mask_utils.decode(rle)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"Cannot decode an RLE segmentation: {error}") from error
    return mask.astype(bool)


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO segmentation as one compressed RLE (pycocotools form: ``counts`` bytes).

    Degenerate polygons follow the module's policy (dropped; all degenerate: empty mask).

    Args:
        segmentation: polygon list, uncompressed RLE or compressed RLE.
        height, width: the image size; an RLE must agree with it.

    Raises:
        InvalidInputError: an empty polygon list, an unrecognised or inconsistent segmentation.
    """
    try:
        if isinstance(segmentation, list):
            return _polygons_to_rle(segmentation, height, width)
        if isinstance(segmentation, Mapping) and "counts" in segmentation and "size" in segmentation:
            size = [int(v) for v in segmentation["size"]]
            if size != [height, width]:
                raise InvalidInputError(f"RLE size {size} does not match the image size {[height, width]}.")
            counts = segmentation["counts"]
            if isinstance(counts, list):  # uncompressed RLE
                runs = [
                    int(c)
                    for c in counts
                    if isinstance(c, int | float) and not isinstance(c, bool) and float(c).is_integer()
                ]
                _check_runs(np.asarray(runs, dtype=np.int64), len(counts), height, width)
                return mask_utils.frPyObjects({"size": size, "counts": runs}, height, width)
            if isinstance(counts, str):
                counts = counts.encode("utf-8")
            if isinstance(counts, bytes):
                _check_runs(_compressed_runs(counts), None, height, width)
                return {"size": size, "counts": counts}
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidInputError(f"Cannot decode a segmentation: {error}") from error
    raise InvalidInputError(
        "Unrecognised segmentation: expected a polygon list or an RLE dict with 'size' and 'counts', "
        f"got {type(segmentation).__name__}."
    )


def is_drawable_polygon(polygon: Any) -> bool:
    """A list of at least 3 points (6 numbers) and an even count of numbers (the policy above)."""
    return isinstance(polygon, list | tuple) and len(polygon) >= 6 and len(polygon) % 2 == 0


def is_clean_polygon_list(segmentation: Any) -> bool:
    """Polygons pycocotools can take as they are: a non-empty list of drawable polygons of
    plain finite numbers. Anything else goes through :func:`segmentation_to_rle` first."""
    return (
        isinstance(segmentation, list)
        and len(segmentation) > 0
        and all(
            is_drawable_polygon(polygon) and all(type(v) in (int, float) and np.isfinite(v) for v in polygon)
            for polygon in segmentation
        )
    )


def _polygon_numbers(polygon: list | tuple, height: int, width: int) -> list[float]:
    try:
        values = [float(v) for v in polygon if not isinstance(v, bool | str)]
    except (TypeError, ValueError, OverflowError):
        values = []
    if len(values) != len(polygon):
        raise InvalidInputError(
            f"Cannot decode a segmentation: a polygon holds something other than numbers: {list(polygon)[:8]!r}."
        )
    array = np.asarray(values)
    reach = 2.0 * max(height, width) + 64.0  # beyond this, pycocotools spends minutes and gigabytes
    if not np.isfinite(array).all() or np.abs(array).max() > reach:
        raise InvalidInputError(
            f"Cannot decode a segmentation: a polygon has a NaN, infinite or far-off coordinate for a "
            f"{width}x{height} image: "
            f"{list(polygon)[:8]!r}."
        )
    return values


def _polygons_to_rle(polygons: list, height: int, width: int) -> dict:
    if not polygons:
        raise InvalidInputError("Empty polygon list: a mask needs at least one polygon.")
    drawable = [
        _polygon_numbers(polygon, height, width) for polygon in polygons if is_drawable_polygon(polygon)
    ]
    if len(drawable) != len(polygons):
        logger.info(
            "dropped %d of %d degenerate polygon(s) (under 3 points or an odd count of numbers)",
            len(polygons) - len(drawable),
            len(polygons),
        )
    if not drawable:  # nothing drawable: an empty mask
        return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return mask_utils.merge(mask_utils.frPyObjects(drawable, height, width))


def box_numbers(box: Any, *, what: str = "A box") -> tuple[float, float, float, float]:
    """The four numbers of a box (any convention), checked: four finite numbers.

    The one check every box goes through (Python API boxes, COCO ``bbox``, boxes from memory
    files): a NaN box would otherwise be clipped to the whole image.

    Raises:
        InvalidInputError: not four numbers, or a NaN or infinite one.
    """
    try:
        values = [float(v) for v in box]
        if any(isinstance(v, bool | str) for v in box):
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(f"{what} is four numbers; got {box!r}.") from None
    if len(values) != 4:
        raise InvalidInputError(f"{what} is four numbers; got {len(values)}: {box!r}.")
    if not all(np.isfinite(values)):
        raise InvalidInputError(f"{what} holds a NaN or infinite number: {box!r}.")
    return values[0], values[1], values[2], values[3]


def _compressed_runs(counts: bytes) -> np.ndarray:
    """The run lengths of a compressed RLE string (COCO's ``rleFrString``, in numpy).

    Each run is a group of 6-bit characters (offset 48), 5 bits each, least significant
    first; bit 0x20 continues the group, bit 0x10 of its last character extends the sign;
    from the fourth run on, a value is added to the run two places before.

    Raises:
        InvalidInputError: a character outside the alphabet or a cut-off group.
    """
    codes = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return codes
    ends = np.flatnonzero((codes & 0x20) == 0)
    if codes.min() < 0 or codes.max() > 63 or ends.size == 0 or ends[-1] != codes.size - 1:
        raise InvalidInputError("Malformed compressed RLE: its counts string is not COCO's encoding.")
    lengths = np.diff(ends, prepend=-1)
    if lengths.max() > 7:  # 35 bits: far beyond any image
        raise InvalidInputError("Malformed compressed RLE: a run length is out of range.")
    position = np.arange(codes.size) - np.repeat(ends - lengths + 1, lengths)
    group = np.repeat(np.arange(ends.size), lengths)
    runs = np.bincount(group, weights=(codes & 0x1F) << (5 * position)).astype(np.int64)
    negative = (codes[ends] & 0x10) != 0
    runs[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs[3::2] += np.cumsum(runs[1::2])[:-1] if runs[3::2].size else 0
    runs[4::2] += np.cumsum(runs[2::2])[:-1] if runs[4::2].size else 0
    return runs


def _check_runs(runs: np.ndarray, expected: int | None, height: int, width: int) -> None:
    """Run lengths pycocotools can decode safely: whole numbers >= 0 adding up to H x W."""
    if (
        (expected is not None and runs.size != expected)
        or (runs < 0).any()
        or int(runs.sum()) != height * width
    ):
        raise InvalidInputError(
            f"Malformed RLE: its run lengths must be whole numbers >= 0 adding up to {height} x {width} pixels."
        )


def box_to_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of a COCO box (x, y, w, h): the pixels whose centre lies inside it.

    Raises:
        InvalidInputError: not four finite numbers (:func:`box_numbers`).
    """
    x, y, w, h = box_numbers(bbox, what="A COCO bbox (x, y, w, h)")
    mask = np.zeros((height, width), dtype=bool)
    x0, y0 = max(0, int(np.ceil(x - 0.5))), max(0, int(np.ceil(y - 0.5)))
    x1, y1 = min(width, int(np.ceil(x + w - 0.5))), min(height, int(np.ceil(y + h - 0.5)))
    mask[y0:y1, x0:x1] = True
    return mask


# --------------------------------------------------------------------------- encode


def mask_to_rle(mask: np.ndarray) -> dict:
    """An (H, W) bool mask as a json-safe compressed RLE: ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InvalidInputError(f"Expected an (H, W) mask, got shape {mask.shape}.")
    return rle_to_json(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool masks as N json-safe compressed RLEs (one pycocotools call for all)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [rle_to_json(rle) for rle in rles]


def rle_to_json(rle: Mapping) -> dict:
    """A pycocotools RLE (``counts`` bytes) as a json-safe dict (``counts`` str)."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("utf-8")
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def rle_area(rle: Mapping) -> int:
    """Number of foreground pixels of a compressed RLE (``counts`` str or bytes)."""
    return int(mask_utils.area(_as_bytes_rle(rle)))


def rle_to_bbox(rle: Mapping) -> list[float]:
    """The COCO box (x, y, w, h) of a compressed RLE (exclusive: w = pixel columns)."""
    return [float(v) for v in mask_utils.toBbox(_as_bytes_rle(rle))]


def _as_bytes_rle(rle: Mapping) -> dict:
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode("utf-8") if isinstance(counts, str) else counts,
    }


# --------------------------------------------------------------------------- boxes


def mask_box_exclusive(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box of one (H, W) bool mask, xyxy with exclusive x2, y2 (pixel edges).

    Raises:
        InvalidInputError: the mask is empty.
    """
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        raise InvalidInputError("The reference mask is empty: mark at least one pixel of the object.")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def masks_to_boxes_exclusive(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of binary masks, exclusive x2, y2 (pixel edges, the :class:`Instances` convention).

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) float32 xyxy; all zeros for an empty mask.
    """
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    for i in range(n):
        ys = np.flatnonzero(rows[i])
        xs = np.flatnonzero(cols[i])
        if len(xs) and len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def masks_to_boxes_inclusive(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks, inclusive x2, y2 (pixel indices, torchvision's convention).

    Used by the class-wise NMS only, where it gives the paper's exact numbers.

    Args:
        masks: (N, H, W) bool, on any device.

    Returns:
        (N, 4) float32 (x1, y1, x2, y2) = (min col, min row, max col, max row); zeros for an
        empty mask.
    """
    n, height, width = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    row_index = torch.arange(height, device=masks.device)
    col_index = torch.arange(width, device=masks.device)
    x1 = torch.where(cols, col_index, width).amin(dim=1)
    x2 = torch.where(cols, col_index, -1).amax(dim=1)
    y1 = torch.where(rows, row_index, height).amin(dim=1)
    y2 = torch.where(rows, row_index, -1).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)
    return torch.where(cols.any(dim=1)[:, None], boxes, torch.zeros_like(boxes))
