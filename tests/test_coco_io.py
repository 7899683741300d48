"""COCO json io: loading with clear errors, annotation <-> mask, image iteration, atomic writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from cocodata import compressed_rle, make_coco_dataset, synthesize_coco, uncompressed_rle, write_coco_dataset
from PIL import Image
from pycocotools.coco import COCO

from refseg.data.coco import (
    annotation_to_mask,
    annotations_by_image,
    category_names,
    iter_images,
    load_coco,
    write_json,
)
from refseg.errors import InvalidInputError
from refseg.masks import box_to_mask, mask_to_rle, rle_area, rle_to_bbox, segmentation_to_mask


@pytest.fixture(scope="module")
def synthetic():
    return synthesize_coco(3, ("cat", "dog", "bird"), seed=1)


# ---------------------------------------------------------------- loading


def test_load_coco_reads_a_generated_dataset(tmp_path: Path) -> None:
    json_path, image_dir = make_coco_dataset(tmp_path, 2, ("cat", "dog"))
    coco = load_coco(json_path)
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert category_names(coco) == {17: "cat", 18: "dog"}
    assert len(coco["images"]) == 2 and all((image_dir / i["file_name"]).is_file() for i in coco["images"])
    grouped = annotations_by_image(coco)
    assert sum(len(v) for v in grouped.values()) == len(coco["annotations"])


def test_load_coco_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        load_coco(tmp_path / "nope.json")


def test_load_coco_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(InvalidInputError, match="not valid json.*line 2"):
        load_coco(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([], "expected a json object"),
        ({"images": [], "annotations": []}, "missing the 'categories' key"),
        ({"images": {}, "annotations": [], "categories": []}, "'images' must be a list"),
        ({"images": [{"id": 1, "width": 4}], "annotations": [], "categories": []}, "image #0 lacks 'height'"),
        (
            {"images": [], "annotations": [{"image_id": 1}], "categories": []},
            "annotation #0 lacks 'category_id'",
        ),
        ({"images": [], "annotations": [], "categories": [{"id": 1}]}, "category #0 lacks 'name'"),
    ],
)
def test_load_coco_structure_errors(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InvalidInputError, match=message):
        load_coco(path)


def test_load_coco_optional_annotations(tmp_path: Path) -> None:
    """An image-info file (test-dev style) has no annotations when not required."""
    path = tmp_path / "info.json"
    path.write_text(json.dumps({"images": [], "categories": []}))
    assert load_coco(path, require=("images", "categories"))["annotations"] == []
    with pytest.raises(InvalidInputError, match="'annotations'"):
        load_coco(path)


# ---------------------------------------------------------------- masks


def test_annotation_to_mask_matches_truth_for_every_format(synthetic) -> None:
    """Polygons, compressed RLE and uncompressed (crowd) RLE all decode to the drawn mask."""
    height, width = synthetic.coco["images"][0]["height"], synthetic.coco["images"][0]["width"]
    kinds = set()
    for annotation in synthetic.coco["annotations"]:
        segmentation = annotation["segmentation"]
        kinds.add(
            "polygon" if isinstance(segmentation, list)
            else "uncompressed" if isinstance(segmentation["counts"], list)
            else "compressed"
        )  # fmt: skip
        mask = annotation_to_mask(annotation, height, width)
        assert mask.dtype == bool and mask.shape == (height, width)
        np.testing.assert_array_equal(mask, synthetic.masks[annotation["id"]])
    assert kinds == {"polygon", "compressed", "uncompressed"}


def test_compressed_rle_with_bytes_counts() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 5:17] = True
    rle = compressed_rle(mask)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    np.testing.assert_array_equal(segmentation_to_mask(as_bytes, 20, 30), mask)


def test_uncompressed_rle_starting_with_foreground() -> None:
    mask = np.zeros((5, 4), dtype=bool)
    mask[0:2, 0] = True  # first pixel (column-major) is foreground
    mask[4, 3] = True
    assert uncompressed_rle(mask)["counts"][0] == 0
    np.testing.assert_array_equal(segmentation_to_mask(uncompressed_rle(mask), 5, 4), mask)


def test_mask_to_rle_round_trip_is_json_safe() -> None:
    rng = np.random.default_rng(0)
    mask = rng.uniform(size=(17, 23)) > 0.6
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [17, 23]
    decoded = segmentation_to_mask(json.loads(json.dumps(rle)), 17, 23)
    np.testing.assert_array_equal(decoded, mask)
    assert rle_area(rle) == int(mask.sum())


def test_rle_to_bbox() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[4:10, 7:12] = True
    assert rle_to_bbox(mask_to_rle(mask)) == [7.0, 4.0, 5.0, 6.0]


def test_rle_size_mismatch_is_an_input_error() -> None:
    rle = mask_to_rle(np.ones((10, 10), dtype=bool))
    with pytest.raises(InvalidInputError, match="does not match the image size"):
        segmentation_to_mask(rle, 10, 12)


def test_degenerate_polygons_are_not_mistaken_for_boxes() -> None:
    """pycocotools reads a 4-number list as a box; a 2-point 'polygon' must draw nothing."""
    assert not segmentation_to_mask([[2, 2, 8, 8]], 10, 10).any()
    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    mask = segmentation_to_mask([[1, 1, 3, 3], *square], 10, 10)
    assert mask.sum() == 16 and mask[2:6, 2:6].all()


def test_unrecognised_segmentation() -> None:
    with pytest.raises(InvalidInputError, match="Unrecognised segmentation"):
        segmentation_to_mask({"foo": 1}, 4, 4)
    with pytest.raises(InvalidInputError, match="Cannot decode"):
        segmentation_to_mask([["a", "b", "c", "d", "e", "f"]], 4, 4)


def test_annotation_without_segmentation() -> None:
    annotation = {"id": 7, "bbox": [1.0, 2.0, 3.0, 4.0]}
    with pytest.raises(InvalidInputError, match="no segmentation.*boxes_to_masks"):
        annotation_to_mask(annotation, 10, 10)
    mask = annotation_to_mask(annotation, 10, 10, box_fallback=True)
    assert mask.sum() == 12 and mask[2:6, 1:4].all()


def test_box_to_mask_pixel_centres_and_clipping() -> None:
    mask = box_to_mask([2.4, 0.6, 3.0, 2.0], 6, 8)  # x centres 2.5..4.5 inside [2.4, 5.4)
    np.testing.assert_array_equal(np.flatnonzero(mask.any(axis=0)), [2, 3, 4])
    np.testing.assert_array_equal(np.flatnonzero(mask.any(axis=1)), [1, 2])
    assert box_to_mask([-5, -5, 100, 100], 6, 8).all()


def test_mask_to_rle_rejects_non_2d() -> None:
    with pytest.raises(InvalidInputError, match="Expected an"):
        mask_to_rle(np.zeros((2, 3, 4), dtype=bool))


# ---------------------------------------------------------------- images


def test_iter_images_yields_the_pixels(tmp_path: Path, synthetic) -> None:
    json_path, image_dir = write_coco_dataset(synthetic, tmp_path)
    coco = load_coco(json_path)
    seen = []
    for info, image in iter_images(coco, image_dir):
        np.testing.assert_array_equal(image, synthetic.pixels[info["file_name"]])
        seen.append(info["id"])
    assert seen == [i["id"] for i in coco["images"]]


def test_iter_images_skips_and_reports_unreadable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    json_path, image_dir = make_coco_dataset(tmp_path, 3, ("cat",))
    coco = load_coco(json_path)
    (image_dir / coco["images"][0]["file_name"]).unlink()
    (image_dir / coco["images"][1]["file_name"]).write_bytes(b"not an image")
    errors: list = []
    with caplog.at_level(logging.INFO, logger="refseg.data.coco"):  # collected: the caller reports them once
        ids = [info["id"] for info, _ in iter_images(coco, image_dir, errors=errors)]
    assert ids == [coco["images"][2]["id"]]
    assert [info["id"] for info, _ in errors] == [coco["images"][0]["id"], coco["images"][1]["id"]]
    assert "not found" in errors[0][1] and "Cannot read" in errors[1][1]
    assert caplog.text.count("skipping image") == 2
    with pytest.raises(InvalidInputError):
        list(iter_images(coco, image_dir, skip_unreadable=False))


def test_iter_images_warns_on_size_mismatch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 12, "height": 11}]}
    with caplog.at_level(logging.WARNING, logger="refseg.data.coco"):
        assert len(list(iter_images(coco, tmp_path))) == 1
    assert "the json says" in caplog.text


def test_iter_images_needs_file_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no 'file_name'"):
        list(iter_images({"images": [{"id": 3, "width": 1, "height": 1}]}, tmp_path))


# ---------------------------------------------------------------- writing


def test_write_json_atomic_and_loadable_by_pycocotools(tmp_path: Path, synthetic) -> None:
    path = write_json({**synthetic.coco, "extra": np.float32(1.5)}, tmp_path / "sub" / "out.json")
    assert path.is_file() and json.loads(path.read_text())["extra"] == 1.5
    assert sorted(COCO(str(path)).getCatIds()) == [16, 17, 18]
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_write_json_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_json({"a": 1}, tmp_path / "out.json")
    with pytest.raises(TypeError):
        write_json({"a": object()}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
