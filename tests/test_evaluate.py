"""COCO evaluation: known answers for perfect, incomplete, mislabelled and empty results."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from cocodata import compressed_rle, ellipse_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from refseg.errors import InvalidInputError
from refseg.evaluate import STAT_NAMES, evaluate, format_table, restrict_gt

HEIGHT, WIDTH = 64, 80
CAT, DOG = 5, 9
# (image id, category id, ellipse centre x, centre y, radius x, radius y); all disjoint, all "small"
OBJECTS = [
    (1, CAT, 15, 15, 10, 9),
    (1, CAT, 52, 40, 12, 10),
    (2, CAT, 25, 25, 14, 13),
    (3, CAT, 60, 25, 10, 18),
    (2, DOG, 58, 45, 10, 12),
    (3, DOG, 20, 40, 14, 14),
]


def make_gt() -> dict:
    annotations = []
    for k, (image_id, category_id, cx, cy, rx, ry) in enumerate(OBJECTS):
        mask = ellipse_mask(cx, cy, rx, ry, HEIGHT, WIDTH)
        ys, xs = np.nonzero(mask)
        annotations.append(
            {
                "id": k + 1,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": compressed_rle(mask),
                "bbox": [
                    float(xs.min()),
                    float(ys.min()),
                    float(xs.max() - xs.min() + 1),
                    float(ys.max() - ys.min() + 1),
                ],
                "area": float(mask.sum()),
                "iscrowd": 0,
            }
        )
    return {
        "images": [
            {"id": i, "width": WIDTH, "height": HEIGHT, "file_name": f"{i}.png"} for i in (1, 2, 3, 4)
        ],
        "annotations": annotations,
        "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}],
    }


def perfect_results(gt: dict, score: float = 0.9) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "segmentation": dict(a["segmentation"]),
            "score": score,
        }
        for a in gt["annotations"]
    ]


@pytest.fixture
def gt() -> dict:
    return make_gt()


def test_perfect_predictions_score_100(gt: dict, capsys: pytest.CaptureFixture) -> None:
    summary = evaluate(gt, perfect_results(gt))
    for iou_type in ("bbox", "segm"):
        stats = summary[iou_type]
        assert set(stats) == set(STAT_NAMES)
        for name in ("AP", "AP50", "AP75", "APs", "AR10", "AR100", "ARs"):
            assert stats[name] == pytest.approx(100.0), (iou_type, name)
        assert stats["AR1"] == pytest.approx(100 * (3 / 4 + 1) / 2)  # image 1 holds 2 cats
        assert stats["APm"] == stats["APl"] == -1.0  # no medium or large ground truth
        assert summary["per_class"][iou_type] == {
            "cat": {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0), "AP75": pytest.approx(100.0)},
            "dog": {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0), "AP75": pytest.approx(100.0)},
        }
    assert summary["classes"] == ["cat", "dog"] and summary["category_ids"] == [CAT, DOG]
    assert summary["num_images"] == 4 and summary["num_results"] == 6
    assert capsys.readouterr().out == ""  # pycocotools' prints do not leak


def test_one_missing_instance_lowers_recall_by_the_hand_computed_amount(gt: dict) -> None:
    """Drop 1 of the 4 cats: cat recall 3/4 at every IoU threshold, dog recall 1, so
    AR100 = (3/4 + 1) / 2. Cat precision is 1 on the 76 recall points 0.00..0.75 of the 101
    and 0 beyond, so AP = (76/101 + 1) / 2."""
    results = [r for r in perfect_results(gt) if not (r["image_id"] == 3 and r["category_id"] == CAT)]
    summary = evaluate(gt, results)
    for iou_type in ("bbox", "segm"):
        assert summary[iou_type]["AR100"] == pytest.approx(100 * (3 / 4 + 1) / 2)
        assert summary[iou_type]["AP"] == pytest.approx(100 * (76 / 101 + 1) / 2)
        assert summary["per_class"][iou_type]["cat"]["AP"] == pytest.approx(100 * 76 / 101)
        assert summary["per_class"][iou_type]["dog"]["AP"] == pytest.approx(100.0)


def test_wrong_class_scores_zero(gt: dict) -> None:
    results = perfect_results(gt)
    for r in results:
        r["category_id"] = DOG if r["category_id"] == CAT else CAT
    summary = evaluate(gt, results)
    for iou_type in ("bbox", "segm"):
        assert summary[iou_type]["AP"] == 0.0 and summary[iou_type]["AR100"] == 0.0


def test_restricting_classes_gives_nap(gt: dict) -> None:
    """Evaluated on cats only, mislabelled dog results do not count."""
    results = perfect_results(gt)
    for r in results:
        if r["category_id"] == DOG:
            r["bbox"] = [0.0, 0.0, 3.0, 3.0]
            r["segmentation"] = compressed_rle(
                np.pad(np.ones((3, 3), bool), ((0, HEIGHT - 3), (0, WIDTH - 3)))
            )
    assert evaluate(gt, results)["bbox"]["AP"] == pytest.approx(50.0)
    summary = evaluate(gt, results, classes=["cat"])
    assert summary["classes"] == ["cat"] and summary["num_results"] == 4
    assert summary["bbox"]["AP"] == pytest.approx(100.0) and summary["segm"]["AP"] == pytest.approx(100.0)
    assert list(summary["per_class"]["bbox"]) == ["cat"]
    assert evaluate(gt, results, classes=[DOG])["bbox"]["AP"] == 0.0


def test_empty_results_are_zeros_not_a_crash(gt: dict) -> None:
    summary = evaluate(gt, [])
    for iou_type in ("bbox", "segm"):
        assert summary[iou_type]["AP"] == 0.0 and summary[iou_type]["AR100"] == 0.0
        assert summary[iou_type]["APm"] == -1.0
    assert summary["num_results"] == 0
    assert "Average Precision" in format_table(summary)


def test_image_subset(gt: dict) -> None:
    results = [r for r in perfect_results(gt) if r["image_id"] != 3]
    assert evaluate(gt, results)["bbox"]["AP"] < 100
    summary = evaluate(gt, perfect_results(gt), image_ids=[1, 2])
    assert summary["num_images"] == 2 and summary["bbox"]["AP"] == pytest.approx(100.0)
    with pytest.raises(InvalidInputError, match="not in the ground truth"):
        evaluate(gt, [], image_ids=[99])


def test_files_as_inputs(gt: dict, tmp_path: Path) -> None:
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(perfect_results(gt)))
    summary = evaluate(gt_path, results_path, iou_types=("segm",))
    assert "bbox" not in summary and summary["segm"]["AP"] == pytest.approx(100.0)


def test_polygon_and_mask_only_results(gt: dict) -> None:
    """Polygon segmentations and results without a box are accepted (boxes come from masks)."""
    square = [10.0, 10.0, 40.0, 10.0, 40.0, 40.0, 10.0, 40.0]
    gt["annotations"] = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": CAT,
            "segmentation": [square],
            "iscrowd": 0,
        }  # no bbox, no area
    ]
    results = [{"image_id": 1, "category_id": CAT, "segmentation": [square], "score": 1.0}]
    summary = evaluate(gt, results)
    assert summary["bbox"]["AP"] == pytest.approx(100.0) and summary["segm"]["AP"] == pytest.approx(100.0)


def test_gt_is_not_modified(gt: dict) -> None:
    before = copy.deepcopy(gt)
    evaluate(gt, perfect_results(gt), classes="cat")
    assert gt == before


def test_input_errors(gt: dict, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not in the ground truth"):
        evaluate(gt, [{**perfect_results(gt)[0], "image_id": 77}])
    with pytest.raises(InvalidInputError, match="Unknown iou types"):
        evaluate(gt, [], iou_types=("keypoints",))
    with pytest.raises(InvalidInputError, match="lacks 'score'"):
        evaluate(gt, [{"image_id": 1, "category_id": CAT, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(InvalidInputError, match="neither a bbox nor a segmentation"):
        evaluate(gt, [{"image_id": 1, "category_id": CAT, "score": 1.0}])
    with pytest.raises(InvalidInputError, match="boxes only"):
        evaluate(gt, [{"image_id": 1, "category_id": CAT, "bbox": [0, 0, 5, 5], "score": 1.0}])
    with pytest.raises(InvalidInputError, match="Results json not found"):
        evaluate(gt, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not valid json"):
        evaluate(gt, tmp_path / "bad.json")
    with pytest.raises(InvalidInputError, match="did you mean 'cat'"):
        evaluate(gt, [], classes=["cta"])


def test_box_only_ground_truth(gt: dict) -> None:
    for a in gt["annotations"]:
        del a["segmentation"]
    boxes = [{k: v for k, v in r.items() if k != "segmentation"} for r in perfect_results(make_gt())]
    assert evaluate(gt, boxes, iou_types=("bbox",))["bbox"]["AP"] == pytest.approx(100.0)
    with pytest.raises(InvalidInputError, match="have no segmentation.*boxes_to_masks"):
        evaluate(gt, boxes)


def test_max_dets(gt: dict) -> None:
    """maxDets counts per image and class: with 1, the second cat of image 1 is never found."""
    summary = evaluate(gt, perfect_results(gt), max_dets=1, iou_types=("bbox",))
    assert summary["max_dets"] == [1, 10, 1]
    assert summary["bbox"]["AR100"] == pytest.approx(100 * (3 / 4 + 1) / 2)
    assert summary["bbox"]["AP"] == pytest.approx(100 * (76 / 101 + 1) / 2)
    assert summary["per_class"]["bbox"]["cat"]["AP"] == pytest.approx(100 * 76 / 101)
    many = evaluate(gt, perfect_results(gt), max_dets=300, iou_types=("bbox",))
    assert many["bbox"]["AP"] == pytest.approx(100.0) and many["bbox"]["AR100"] == pytest.approx(100.0)
    assert "maxDets=300" in format_table(many)


def test_format_table_matches_pycocotools(gt: dict) -> None:
    """The 12 lines are exactly what pycocotools' own summarize() prints."""
    results = perfect_results(gt)[:-2] + [{**perfect_results(gt)[-1], "score": 0.3}]
    summary = evaluate(gt, results, iou_types=("bbox",))
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = [line for line in printed.getvalue().splitlines() if line.startswith(" Average")]
    table = format_table(summary).splitlines()
    assert table[0] == "IoU type: bbox"
    assert table[1:13] == expected
    assert table[13].split() == ["class", "AP", "AP50", "AP75"]
    assert table[14].split()[0] == "cat" and table[15].split()[0] == "dog"
    assert len(format_table(summary, per_class=False).splitlines()) == 13


def small_mask_big_box() -> dict:
    """A false positive on image 4: a 10x10 mask in a 60x60 box."""
    fp_mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    fp_mask[2:12, 2:12] = True
    return {
        "image_id": 4,
        "category_id": CAT,
        "bbox": [0.0, 0.0, 60.0, 60.0],
        "segmentation": compressed_rle(fp_mask),
        "score": 0.95,
    }


def test_segm_areas_come_from_the_masks(gt: dict) -> None:
    """A false positive with a 10x10 mask but a 60x60 box is a 'small' object for segm, so it
    counts against APs (with its box area it would fall in 'medium' and be ignored there)."""
    false_positive = small_mask_big_box()
    summary = evaluate(gt, [*perfect_results(gt), false_positive], iou_types=("segm",), classes=["cat"])
    # cat precision: 1/2 at recall 1/4, then 2/3, 3/4, 4/5 -> interpolated 4/5 on all 101 points
    assert summary["segm"]["APs"] == pytest.approx(80.0)
    assert summary["segm"]["APs"] == summary["segm"]["AP"]


def test_plain_pycocotools_segm_areas_keep_the_result_boxes(gt: dict) -> None:
    """--segm-areas box: the false positive's 60x60 box makes it 'medium', out of APs."""
    false_positive = small_mask_big_box()
    results = [*perfect_results(gt), false_positive]
    ours = evaluate(gt, results, iou_types=("segm",), classes=["cat"])
    plain = evaluate(gt, results, iou_types=("segm",), classes=["cat"], segm_areas="box")
    assert ours["segm_areas"] == "mask" and plain["segm_areas"] == "box"
    assert plain["segm"]["AP"] == ours["segm"]["AP"]
    assert ours["segm"]["APs"] == pytest.approx(80.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools itself, results loaded as they are
        coco_gt = COCO()
        coco_gt.dataset = restrict_gt(gt, [CAT])
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "segm")
        evaluator.params.catIds = [CAT]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert plain["segm"]["APs"] == pytest.approx(100 * evaluator.stats[3])
    assert plain["segm"]["APs"] != ours["segm"]["APs"]
    with pytest.raises(InvalidInputError, match="segm_areas"):
        evaluate(gt, results, iou_types=("segm",), segm_areas="polygon")


def test_eval_help_says_the_segm_convention() -> None:
    from click.testing import CliRunner

    from refseg.cli import cli

    text = CliRunner().invoke(cli, ["eval", "--help"]).output
    assert "result boxes are dropped" in text and "--segm-areas" in text and "plain pycocotools" in text
