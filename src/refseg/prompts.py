"""The prompts that mark one reference object: a box and/or points, in the picture's pixels.

:func:`check_prompt` is the one check of what a user gives (a clear
:class:`~refseg.errors.InvalidInputError` for anything SAM2 cannot take); a
:class:`ReferencePrompt` then scales itself to the proposer's square input, as SAM2's own
predictor does (x * S / W, y * S / H), and says how it was marked for the memory file's
provenance, so the mask can be made again from it (``refseg memory show``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidInputError
from .masks import box_numbers

BOX = "A box (x1, y1, x2, y2)"


@dataclass(frozen=True)
class ReferencePrompt:
    """A box and/or points on one picture, checked (at least one of the two is given).

    Attributes:
        box: (x1, y1, x2, y2) in pixels as given, or None.
        clipped_box: ``box`` clipped to the picture (what SAM2 is prompted with), or None.
        points: ((x, y), ...) in pixels, inside the picture, or None.
        labels: one per point: 1 (on the object) or 0 (not on the object), or None.
    """

    box: tuple[float, float, float, float] | None
    clipped_box: tuple[float, float, float, float] | None
    points: tuple[tuple[float, float], ...] | None
    labels: tuple[int, ...] | None

    @property
    def kind(self) -> str:
        """ "box", "points" or "box+points"."""
        if self.points is None:
            return "box"
        return "points" if self.box is None else "box+points"

    def describe(self) -> str:
        """The prompt in words, for messages."""
        parts = []
        if self.box is not None:
            parts.append(f"the box {list(self.box)}")
        if self.points is not None:
            parts.append(f"the points {[list(p) for p in self.points]} (labels {list(self.labels or ())})")
        return " and ".join(parts)

    def to_source(self) -> dict[str, object]:
        """Provenance: ``{"prompt": kind, "box": [x1, y1, x2, y2], "points": [[x, y], ...],
        "point_labels": [1, 0, ...]}`` (keys of what was given), in the picture's pixels."""
        source: dict[str, object] = {"prompt": self.kind}
        if self.box is not None:
            source["box"] = list(self.box)
        if self.points is not None:
            source["points"] = [list(point) for point in self.points]
            source["point_labels"] = list(self.labels or ())
        return source

    def scaled(
        self, size: int, height: int, width: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The prompt in the proposer's S x S input space.

        Returns:
            points (P, 2) float32 or None, labels (P,) int32 or None, box (4,) float32 or None.
        """
        scale = torch.tensor([size / width, size / height], dtype=torch.float32)
        points = labels = box = None
        if self.points is not None:
            points = torch.tensor(self.points, dtype=torch.float32) * scale
            labels = torch.tensor(self.labels, dtype=torch.int32)
        if self.clipped_box is not None:
            box = torch.tensor(self.clipped_box, dtype=torch.float32) * scale.repeat(2)
        return points, labels, box


def check_prompt(
    box: Sequence[float] | None,
    points: Sequence[Sequence[float]] | None,
    point_labels: Sequence[int] | None,
    height: int,
    width: int,
) -> ReferencePrompt | None:
    """Check a box and/or points given on an ``height`` x ``width`` picture.

    Args:
        box: (x1, y1, x2, y2) in pixels, or None; clipped to the picture, must keep an area.
        points: a sequence of (x, y) pixels, or None; each finite and inside the picture
            (0 <= x <= width, 0 <= y <= height).
        point_labels: one per point, 1 (object) or 0 (not object); None means all 1.

    Returns:
        The checked prompt, or None when neither a box nor points are given.

    Raises:
        InvalidInputError: what is wrong, in words.
    """
    if points is None:
        if point_labels is not None:
            raise InvalidInputError("point_labels were given without points: give the points they label.")
        if box is None:
            return None
    clipped = given = None
    if box is not None:
        given = box_numbers(box, what=BOX)
        clipped = check_box(given, height, width)
    checked_points = checked_labels = None
    if points is not None:
        checked_points, checked_labels = check_points(points, point_labels, height, width)
        if box is None and not any(checked_labels):
            raise InvalidInputError(
                "Every point is labelled 0 (not the object) and there is no box: mark at least one point "
                "on the object (label 1), or give a box."
            )
    return ReferencePrompt(given, clipped, checked_points, checked_labels)


def check_box(box: Sequence[float], height: int, width: int) -> tuple[float, float, float, float]:
    """A box (x1, y1, x2, y2) clipped to the picture.

    Raises:
        InvalidInputError: not four finite numbers, or empty or outside the picture once clipped.
    """
    x1, y1, x2, y2 = box_numbers(box, what=BOX)
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 <= x1 or y2 <= y1:
        raise InvalidInputError(f"The box {list(box)} is empty or outside the {width}x{height} image.")
    return x1, y1, x2, y2


def check_points(
    points: Sequence[Sequence[float]], point_labels: Sequence[int] | None, height: int, width: int
) -> tuple[tuple[tuple[float, float], ...], tuple[int, ...]]:
    """Points (x, y) inside the picture and their labels (default all 1).

    Raises:
        InvalidInputError: not a list of (x, y) pairs, none at all, a coordinate that is not a
            finite number or lies outside the picture, labels other than 0/1, or a number of
            labels other than the number of points.
    """
    example = "e.g. points=[(120, 80), (140, 95)]"
    if isinstance(points, str | bytes):
        raise InvalidInputError(f"points must be a list of (x, y) pairs, {example}; got {points!r}.")
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"points must be a list of (x, y) pairs of numbers, {example}; got {points!r}."
        ) from None
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise InvalidInputError(
            f"points must be a non-empty list of (x, y) pairs, {example}; got an array of shape {array.shape}."
        )
    for x, y in array:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidInputError(f"The point ({x}, {y}) is not a pair of finite numbers.")
        if not (0.0 <= x <= width and 0.0 <= y <= height):
            raise InvalidInputError(f"The point ({x:g}, {y:g}) lies outside the {width}x{height} image.")
    count = array.shape[0]
    if point_labels is None:
        labels: tuple[int, ...] = (1,) * count
    else:
        if isinstance(point_labels, str | bytes):
            raise InvalidInputError(
                f"point_labels must be a list of 1 (object) and 0 (not object); got {point_labels!r}."
            )
        label_array = np.asarray(point_labels)
        if label_array.ndim != 1 or label_array.dtype.kind not in "biuf":
            raise InvalidInputError(
                f"point_labels must be a list of 1 (object) and 0 (not object), one per point; got {point_labels!r}."
            )
        if label_array.shape[0] != count:
            raise InvalidInputError(
                f"{count} point(s) but {label_array.shape[0]} label(s): give one label per point."
            )
        if not np.isin(label_array, (0, 1)).all():
            raise InvalidInputError(
                f"A point label is 1 (on the object) or 0 (not on the object); got {label_array.tolist()}."
            )
        labels = tuple(int(v) for v in label_array)
    return tuple((float(x), float(y)) for x, y in array), labels
