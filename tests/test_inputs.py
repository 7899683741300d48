"""Bad input data is refused with a message, never turned into a wrong result: boxes, COCO
fields, duplicate ids and names, degenerate polygons in evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene

from refseg import InvalidInputError, Segmenter
from refseg.data.coco import check_coco
from refseg.evaluate import evaluate
from refseg.masks import box_numbers, box_to_mask, mask_to_rle, segmentation_to_mask

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


# ----------------------------------------------------------------------------- COCO fields


def _coco() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 12], "iscrowd": 0, "area": 120.0,
             "segmentation": [[1, 2, 11, 2, 11, 14, 1, 14]]},
        ],
        "categories": [{"id": 7, "name": "cat"}],
    }  # fmt: skip


BAD_FIELDS = [
    ("images", "id", "one"),
    ("images", "id", None),
    ("images", "id", True),
    ("images", "id", 1.5),
    ("images", "width", 0),
    ("images", "height", -3),
    ("images", "height", "30"),
    ("images", "file_name", 3),
    ("images", "file_name", ""),
    ("categories", "id", "seven"),
    ("categories", "id", None),
    ("categories", "name", 7),
    ("categories", "name", " "),
    ("annotations", "image_id", "1"),
    ("annotations", "image_id", None),
    ("annotations", "category_id", "seven"),
    ("annotations", "category_id", False),
    ("annotations", "id", "five"),
    ("annotations", "iscrowd", "yes"),
    ("annotations", "iscrowd", 2),
    ("annotations", "bbox", "1,2,3,4"),
    ("annotations", "bbox", [1, 2, 3]),
    ("annotations", "bbox", [1, 2, math.nan, 4]),
    ("annotations", "bbox", [1, 2, -3, 4]),
    ("annotations", "bbox", None),
    ("annotations", "area", "big"),
    ("annotations", "area", math.inf),
    ("annotations", "segmentation", "polygon"),
    ("annotations", "segmentation", 3),
]


@pytest.mark.parametrize(("section", "key", "value"), BAD_FIELDS)
def test_coco_fields_of_the_wrong_type_are_refused_by_name(section: str, key: str, value: object) -> None:
    data = _coco()
    data[section][0][key] = value
    kind = {"images": "image", "categories": "category", "annotations": "annotation"}[section]
    with pytest.raises(InvalidInputError, match=f"{kind} #0.*'{key}' must be"):
        check_coco(data, source="t.json")


def test_integer_valued_floats_and_bool_crowd_flags_are_fine() -> None:
    data = _coco()
    data["images"][0]["id"] = 1.0
    data["annotations"][0]["image_id"] = 1.0
    data["annotations"][0]["iscrowd"] = False
    check_coco(data)


def test_duplicate_image_ids_are_refused() -> None:
    """Annotations were encoded from the wrong picture, without a word."""
    data = _coco()
    data["images"].append({"id": 1, "file_name": "b.png", "width": 40, "height": 30})
    with pytest.raises(InvalidInputError, match="two images have the id 1"):
        check_coco(data)


def test_duplicate_category_names_and_ids_are_refused() -> None:
    """The memory recorded the wrong category id of two categories called the same."""
    data = _coco()
    data["categories"].append({"id": 8, "name": "cat"})
    with pytest.raises(InvalidInputError, match="two categories have the name 'cat'"):
        check_coco(data)
    data["categories"][1] = {"id": 7, "name": "dog"}
    with pytest.raises(InvalidInputError, match="two categories have the id 7"):
        check_coco(data)


def test_duplicate_annotation_ids_are_refused() -> None:
    data = _coco()
    data["annotations"].append(dict(data["annotations"][0]))
    with pytest.raises(InvalidInputError, match="two annotations have the id 5"):
        check_coco(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"file_name": None}, "file_name"),
        ({"id": "x"}, "'id' must be an integer"),
    ],
)
def test_predict_coco_targets_need_ids_and_file_names(tmp_path, change: dict, message: str) -> None:
    from refseg.targets import coco_targets

    image = {"id": 1, "file_name": "a.png", **change}
    image = {k: v for k, v in image.items() if v is not None}
    (tmp_path / "t.json").write_text(json.dumps({"images": [image]}))
    with pytest.raises(InvalidInputError, match=message):
        coco_targets(tmp_path / "t.json", tmp_path)


# ----------------------------------------------------------------------------- masks pycocotools never sees


@pytest.mark.parametrize(
    "segmentation",
    [
        [[1, 2, 3, 4, 5, math.nan]],  # killed the process (pycocotools cast NaN to an int)
        [[0, 0, 1e9, 0, 5, 5]],  # minutes and gigabytes in pycocotools
        [["a", "b", "c", "d", "e", "f"]],
        {"size": [30, 40], "counts": ""},  # decoded to garbage memory
        {"size": [30, 40], "counts": "!!!"},
        {"size": [30, 40], "counts": [10, 20]},
        {"size": [30, 40], "counts": [-5, 1205]},
        {"size": [30, 40], "counts": [1.5, 1198.5]},
        {"size": [30, 41], "counts": [1230]},
    ],
)
def test_malformed_polygons_and_rles_are_refused(segmentation) -> None:
    with pytest.raises(InvalidInputError, match="segmentation|RLE"):
        segmentation_to_mask(segmentation, 30, 40)


def test_compressed_rle_runs_are_read_as_pycocotools_reads_them() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(1, 80, 2))
        mask = rng.random((height, width)) > rng.random()
        assert (segmentation_to_mask(mask_to_rle(mask), height, width) == mask).all()


# ----------------------------------------------------------------------------- evaluation


def test_eval_drops_degenerate_ground_truth_polygons_as_the_mask_module_does(tmp_path) -> None:
    """pycocotools stopped with a bare 'Exception: input type is not supported.'"""
    gt = _coco()
    gt["annotations"][0]["segmentation"] = [[1, 2, 11, 2, 11, 14, 1, 14], [1, 2, 3, 4, 5]]
    result = {"image_id": 1, "category_id": 7, "score": 0.9, "segmentation": mask_to_rle(
        segmentation_to_mask([[1, 2, 11, 2, 11, 14, 1, 14]], 30, 40))}  # fmt: skip
    summary = evaluate(gt, [result], iou_types=("segm",))
    assert summary["segm"]["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"score": math.nan}, "'score' must be a finite number"),
        ({"score": "high"}, "'score' must be a finite number"),
        ({"image_id": "1"}, "'image_id' must be an integer"),
        ({"category_id": None}, "'category_id' must be an integer"),
        ({"bbox": [1, 2, 3]}, "four numbers"),
        ({"bbox": [1, 2, math.inf, 3]}, "NaN or infinite"),
        ({"segmentation": "mask"}, "polygons or an RLE"),
    ],
)
def test_eval_refuses_results_of_the_wrong_type(change: dict, message: str) -> None:
    result = {"image_id": 1, "category_id": 7, "score": 0.5, "bbox": [1, 2, 10, 12], **change}
    with pytest.raises(InvalidInputError, match=message):
        evaluate(_coco(), [result], iou_types=("bbox",))


@pytest.mark.parametrize(
    "segmentation",
    [{"size": [30, 41], "counts": "PP"}, {"size": [30, 40], "counts": "PP"}, [[1, 2, 3, 4, 5, math.nan]]],
)
def test_eval_refuses_result_masks_it_cannot_read(segmentation) -> None:
    result = {"image_id": 1, "category_id": 7, "score": 0.5, "segmentation": segmentation}
    with pytest.raises(InvalidInputError, match="RLE|segmentation"):
        evaluate(_coco(), [result], iou_types=("segm",))


@pytest.mark.parametrize("verb", ["gt", "results", "images-json"])
def test_json_nested_too_deep_is_an_error_not_a_recursion_traceback(tmp_path, verb: str) -> None:
    from click.testing import CliRunner

    from refseg.cli import cli

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    good = tmp_path / "gt.json"
    good.write_text(json.dumps(_coco()))
    (tmp_path / "r.json").write_text("[]")
    files = {"gt": good, "results": tmp_path / "r.json", "images-json": None, verb: deep}
    args = ["eval", "--gt", files["gt"], "--results", files["results"]]
    if files["images-json"] is not None:
        args += ["--images-json", files["images-json"]]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1 and "Error: " in result.stderr and "deep.json" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
