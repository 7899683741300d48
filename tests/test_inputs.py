"""Bad input data is refused with a message, never turned into a wrong result: boxes, COCO
fields, duplicate ids and names, degenerate polygons in evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene

from refseg import InvalidInputError, Segmenter
from refseg.masks import box_numbers, box_to_mask

# ----------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    "box",
    [
        (math.nan, 0, 10, 10),
        (0, 0, math.inf, 10),
        (0, 0, 10),
        (0, 0, 10, 10, 10),
        ("0", "0", "10", "10"),
        None,
        "box",
        (True, 0, 10, 10),
    ],
)
def test_a_box_that_is_not_four_finite_numbers_is_refused(box) -> None:
    with pytest.raises(InvalidInputError, match="four numbers|NaN or infinite"):
        box_numbers(box)


def test_a_nan_box_is_refused_not_taken_as_the_whole_image() -> None:
    """A NaN box was clipped to the whole image, and the reference became the whole picture."""
    scene = make_scene(3, classes=("red",), per_class=1)
    segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder())
    for box in ([math.nan, 0, 10, 10], [0, 0, math.nan, math.nan], [-math.inf, 0, 5, 5]):
        with pytest.raises(InvalidInputError, match="NaN or infinite"):
            segmenter.add_reference(scene.image, "red", box=box)
    assert len(segmenter.memory) == 0
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        box_to_mask([0, 0, math.nan, 4], 8, 8)
    assert box_to_mask([2, 2, 4, 4], 8, 8).sum() == 16


def test_an_empty_polygon_mask_is_refused_as_a_reference() -> None:
    scene = make_scene(3, classes=("red",), per_class=1)
    segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder())
    for mask in ([[]], [[1, 2, 3]], [], [[1, 2, 3, 4, 5, 6, 7]], {"size": [1, 1], "counts": ""}):
        with pytest.raises(InvalidInputError):
            segmenter.add_reference(scene.image, "red", mask=mask)
    assert np.asarray(scene.image).shape[2] == 3
