"""The one mask module: every reader follows one degenerate-polygon policy; boxes name their convention."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from synthetic import SyntheticEncoder, SyntheticProposer

from refseg import InvalidInputError, Segmenter
from refseg.data.coco import annotation_to_mask
from refseg.masks import (
    decode_mask,
    mask_box_exclusive,
    mask_to_rle,
    masks_to_boxes_exclusive,
    masks_to_boxes_inclusive,
    masks_to_rles,
    segmentation_to_mask,
)

SQUARE = [2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]
DEGENERATE = [[1, 1, 3, 3], [1, 1, 3, 3, 5]]  # 2 points (pycocotools would read a box); odd length


def test_degenerate_polygons_are_dropped_by_every_reader(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="refseg.masks"):
        reference = decode_mask([*DEGENERATE, SQUARE], (10, 10))  # the reference path
    assert "dropped 2 of 3 degenerate polygon(s)" in caplog.text
    annotation = annotation_to_mask({"segmentation": [*DEGENERATE, SQUARE]}, 10, 10)  # the COCO path
    assert np.array_equal(reference, annotation)
    assert reference.sum() == 16 and reference[2:6, 2:6].all()


def test_only_degenerate_polygons_make_an_empty_mask_that_a_reference_refuses() -> None:
    assert not decode_mask(DEGENERATE, (10, 10)).any()
    assert not segmentation_to_mask(DEGENERATE, 10, 10).any()
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder(input_size=56))
    with pytest.raises(InvalidInputError, match="mask is empty"):
        segmenter.add_reference(image, "thing", mask=DEGENERATE)


def test_an_empty_polygon_list_is_refused_by_every_reader() -> None:
    with pytest.raises(InvalidInputError, match="Empty polygon list"):
        decode_mask([], (4, 4))
    with pytest.raises(InvalidInputError, match="Empty polygon list"):
        segmentation_to_mask([], 4, 4)


def test_rle_encoding_one_or_many_agree() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 9)) > 0.5
    assert masks_to_rles(masks) == [mask_to_rle(m) for m in masks]
    assert masks_to_rles(np.zeros((0, 7, 9), dtype=bool)) == []
    for mask, rle in zip(masks, masks_to_rles(masks), strict=True):
        assert isinstance(rle["counts"], str) and np.array_equal(decode_mask(rle, (7, 9)), mask)


def test_exclusive_and_inclusive_boxes_differ_by_one_pixel_on_x2_y2() -> None:
    masks = np.zeros((3, 6, 8), dtype=bool)
    masks[0, 2, 3] = True
    masks[1, 1:4, 2:7] = True
    exclusive = masks_to_boxes_exclusive(masks)
    inclusive = masks_to_boxes_inclusive(torch.from_numpy(masks)).numpy()
    assert exclusive.tolist() == [[3, 2, 4, 3], [2, 1, 7, 4], [0, 0, 0, 0]]
    assert inclusive.tolist() == [[3, 2, 3, 2], [2, 1, 6, 3], [0, 0, 0, 0]]
    assert mask_box_exclusive(masks[1]) == (2, 1, 7, 4)
