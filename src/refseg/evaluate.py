"""Standard COCO evaluation (pycocotools ``COCOeval``) restricted to chosen classes.

Restricting the ground truth to a class subset (its categories and annotations, every image
kept) makes AP the benchmarks' nAP. pycocotools prints as it works; here that output goes to
the debug log, never to stdout. The 12 summary numbers are computed from ``COCOeval.eval``
as ``COCOeval.summarize`` does, but for any ``max_dets`` (``summarize`` assumes 100).

Details that follow the common practice of detectron2's COCO evaluator:
- for ``segm``, result boxes are dropped before loading, so pycocotools takes each result's
  area from its mask, not its box (areas decide the small/medium/large ranges, so APs, APm and
  APl). Plain pycocotools keeps a result's ``bbox`` and takes its area from the box (``loadRes``
  reads the box first): ``segm_areas="box"`` evaluates that way (``refseg eval --segm-areas
  box``). AP, AP50, AP75 and the ARs over all areas are the same either way;
- results of classes outside the evaluated set are dropped.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .data.coco import check_coco, has_segmentation, load_coco
from .data.splits import resolve_classes
from .errors import InvalidInputError
from .masks import is_clean_polygon_list, rle_area, rle_to_bbox, rle_to_json, segmentation_to_rle
from .results import load_results

logger = logging.getLogger(__name__)

#: Names of the 12 COCOeval summary numbers, in COCOeval.stats order.
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # fmt: skip
IOU_TYPES: tuple[str, ...] = ("bbox", "segm")
#: Where a segm result's area comes from: its mask (default, as detectron2) or its box (pycocotools).
SEGM_AREAS: tuple[str, ...] = ("mask", "box")


def evaluate(
    gt: str | os.PathLike | Mapping,
    results: str | os.PathLike | Sequence[Mapping],
    *,
    classes: str | Sequence[str | int] | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
    max_dets: int = 100,
    image_ids: Iterable[int] | None = None,
    segm_areas: str = "mask",
) -> dict[str, Any]:
    """COCO AP/AR of detection or segmentation results.

    Args:
        gt: ground-truth COCO json path or dict.
        results: COCO results json path or list (dicts with image_id, category_id, score and
            bbox (x, y, w, h) and/or segmentation (RLE), as ``Instances.to_coco`` writes).
        classes: evaluate only these classes (a split name, names or category ids; see
            :func:`refseg.data.splits.resolve_classes`). ``None``: every gt category.
        iou_types: any of ``"bbox"`` and ``"segm"``.
        max_dets: detections per image considered (the third of COCOeval's maxDets,
            ``[1, 10, max_dets]``); the ``AR100`` key always holds AR at this value.
        image_ids: evaluate on these gt images only (default: all).
        segm_areas: for ``segm``, where a result's area (its small/medium/large range) comes
            from: ``"mask"`` (default; result boxes dropped, as detectron2) or ``"box"`` (plain
            pycocotools: a result's ``bbox`` is kept and its area is the box's w x h).

    Returns:
        ``{"bbox": {stat: value}, "segm": {...}, "per_class": {iou_type: {class: {"AP", "AP50",
        "AP75"}}}, "classes": [...], "category_ids": [...], "num_images": int,
        "num_results": int, "max_dets": [1, 10, max_dets], "segm_areas": str}``, with one entry per requested iou
        type and stats named as :data:`STAT_NAMES`, in percent. A stat pycocotools cannot
        define (no ground truth in that area range) is ``-1.0``. No results: zeros.

    Raises:
        InvalidInputError: unreadable files, an unknown class or iou type, results on images
            not in the gt, results none of whose category ids is a gt category, ``segm``
            asked for with box-only ground truth or results.
    """
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown or not iou_types:
        raise InvalidInputError(f"Unknown iou types {unknown or list(iou_types)}: use 'bbox' and/or 'segm'.")
    if int(max_dets) < 1:
        raise InvalidInputError(f"max_dets must be at least 1, got {max_dets}.")
    if segm_areas not in SEGM_AREAS:
        raise InvalidInputError(f"segm_areas must be one of {', '.join(SEGM_AREAS)}, got {segm_areas!r}.")
    gt_data = load_coco(gt) if isinstance(gt, str | os.PathLike) else check_coco(dict(gt))
    result_list = load_results(results)
    _check_result_categories(result_list, gt_data["categories"], results)

    if classes is None:
        chosen = [(str(c["name"]), int(c["id"])) for c in gt_data["categories"]]
    else:
        chosen = resolve_classes(classes, gt_data)
    category_ids = [cid for _, cid in chosen]
    gt_data = restrict_gt(gt_data, category_ids, image_ids)
    evaluated_images = {int(image["id"]) for image in gt_data["images"]}
    result_list = _restrict_results(result_list, set(category_ids), evaluated_images, image_ids is not None)

    summary: dict[str, Any] = {
        "classes": [name for name, _ in chosen],
        "category_ids": category_ids,
        "num_images": len(evaluated_images),
        "num_results": len(result_list),
        "max_dets": [1, 10, int(max_dets)],
        "segm_areas": segm_areas,
        "per_class": {},
    }
    coco_gt = _silent(_coco_from_dict, gt_data)
    for iou_type in iou_types:
        if iou_type == "segm":
            _check_segm_inputs(gt_data, result_list)
        stats, per_class = _evaluate_one(
            coco_gt, gt_data, result_list, iou_type, chosen, int(max_dets), segm_areas
        )
        summary[iou_type] = stats
        summary["per_class"][iou_type] = per_class
    return summary


def _check_result_categories(results: Sequence[Mapping], categories: Sequence[Mapping], source: Any) -> None:
    """Refuse results whose category ids are none of the ground truth's (all-zero scores that
    say nothing); warn about those that are partly so (they are not evaluated)."""
    found = {int(r["category_id"]) for r in results}
    known = {int(c["id"]): str(c["name"]) for c in categories}
    stray = found - set(known)
    if not stray:
        return
    if stray != found:
        logger.warning(
            "%d result(s) have category ids the ground truth does not have (%s): not evaluated",
            sum(int(r["category_id"]) in stray for r in results),
            ", ".join(map(str, sorted(stray)[:10])),
        )
        return
    gt_ids = ", ".join(f"{name}={cid}" for cid, name in sorted(known.items())[:20])
    named = ""
    if isinstance(source, str | os.PathLike):
        from .results import sidecar_path

        sidecar = sidecar_path(source, "images")
        try:
            listed = json.loads(sidecar.read_text(encoding="utf-8")).get("categories") or []
            named = ", ".join(f"{c['name']}={c['id']}" for c in listed[:20])
        except (OSError, ValueError, AttributeError, TypeError, KeyError, RecursionError):
            named = ""
    raise InvalidInputError(
        f"None of the results' category ids ({', '.join(map(str, sorted(found)[:20]))}) is a category of "
        f"the ground truth ({gt_ids or 'none'})"
        + (f"; the results name theirs {named}" if named else "")
        + ". The results were made with other category ids: predict with --coco GT.json --images DIR "
        "(results then carry the json's id of each class, matched by name), or build the memory from "
        "this data set's references."
    )


def restrict_gt(gt: Mapping, category_ids: Sequence[int], image_ids: Iterable[int] | None = None) -> dict:
    """A copy of a gt COCO dict with only the given categories (and images), for nAP.

    Every image is kept (images without annotations of these classes still count for false
    positives) unless ``image_ids`` narrows them. Missing ``iscrowd`` becomes 0, missing
    ``area`` the mask area (or box area), missing ``bbox`` the mask's box and missing ``id``
    a running number, as COCOeval needs them.
    """
    keep = {int(c) for c in category_ids}
    images = list(gt["images"])
    if image_ids is not None:
        wanted = {int(i) for i in image_ids}
        unknown = wanted - {int(image["id"]) for image in images}
        if unknown:
            raise InvalidInputError(f"Image ids not in the ground truth: {sorted(unknown)[:10]}.")
        images = [image for image in images if int(image["id"]) in wanted]
    image_sizes = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in images}
    annotations = []
    used_ids = {int(a["id"]) for a in gt["annotations"] if "id" in a}
    next_id = max(used_ids, default=0) + 1
    for annotation in gt["annotations"]:
        if int(annotation["category_id"]) not in keep or int(annotation["image_id"]) not in image_sizes:
            continue
        annotation = dict(annotation)
        annotation.setdefault("iscrowd", 0)
        if "id" not in annotation:
            annotation["id"], next_id = next_id, next_id + 1
        if has_segmentation(annotation) and not is_clean_polygon_list(annotation["segmentation"]):
            # degenerate polygons or an RLE: as refseg.masks reads them, before pycocotools does
            height, width = image_sizes[int(annotation["image_id"])]
            try:
                rle = segmentation_to_rle(annotation["segmentation"], height, width)
            except InvalidInputError as error:
                raise InvalidInputError(f"Ground-truth annotation {annotation['id']}: {error}") from None
            annotation["segmentation"] = rle_to_json(rle)
        if ("bbox" not in annotation or "area" not in annotation) and has_segmentation(annotation):
            height, width = image_sizes[int(annotation["image_id"])]
            rle = segmentation_to_rle(annotation["segmentation"], height, width)
            annotation.setdefault("bbox", rle_to_bbox(rle))
            annotation.setdefault("area", float(rle_area(rle)))
        if "bbox" not in annotation:
            raise InvalidInputError(
                f"Ground-truth annotation {annotation['id']} has neither bbox nor segmentation."
            )
        annotation.setdefault("area", float(annotation["bbox"][2]) * float(annotation["bbox"][3]))
        annotations.append(annotation)
    return {
        **{k: v for k, v in gt.items() if k not in ("images", "annotations", "categories")},
        "images": images,
        "annotations": annotations,
        "categories": [c for c in gt["categories"] if int(c["id"]) in keep],
    }


def _restrict_results(
    results: list[dict], category_ids: set[int], image_ids: set[int], images_narrowed: bool
) -> list[dict]:
    kept = [r for r in results if int(r["category_id"]) in category_ids]
    stray = {int(r["image_id"]) for r in kept} - image_ids
    if stray and not images_narrowed:
        raise InvalidInputError(
            f"{len(stray)} result image id(s) are not in the ground truth (e.g. {sorted(stray)[:5]}): "
            "were the results made for another annotation file?"
        )
    kept = [r for r in kept if int(r["image_id"]) in image_ids]
    if len(kept) < len(results):
        logger.info("evaluating %d of %d results (other classes or images dropped)", len(kept), len(results))
    return kept


def _check_segm_inputs(gt: Mapping, results: Sequence[Mapping]) -> None:
    boxes_only = [a.get("id") for a in gt["annotations"] if not has_segmentation(a)]
    if boxes_only:
        raise InvalidInputError(
            f"{len(boxes_only)} ground-truth annotation(s) have no segmentation (e.g. id {boxes_only[0]}): "
            "evaluate with iou_types=('bbox',) or make masks with refseg.data.boxes.boxes_to_masks."
        )
    if results and not any("segmentation" in r for r in results):
        raise InvalidInputError("The results hold boxes only: evaluate them with iou_types=('bbox',).")


def _evaluate_one(
    coco_gt: COCO,
    gt_data: Mapping,
    results: list[dict],
    iou_type: str,
    chosen: Sequence[tuple[str, int]],
    max_dets: int,
    segm_areas: str = "mask",
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    results = _prepare_results(results, iou_type, gt_data["images"], keep_boxes=segm_areas == "box")
    if results:
        coco_dt = _silent(coco_gt.loadRes, results)
    else:
        empty = {"images": gt_data["images"], "categories": gt_data["categories"], "annotations": []}
        coco_dt = _silent(_coco_from_dict, empty)
    evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    evaluator.params.catIds = [cid for _, cid in chosen]
    evaluator.params.imgIds = sorted(int(image["id"]) for image in gt_data["images"])
    evaluator.params.maxDets = sorted({1, 10, max_dets})
    _silent(evaluator.evaluate)
    _silent(evaluator.accumulate)
    return _summary_stats(evaluator, max_dets), _per_class(evaluator, chosen, max_dets)


def _summary_stats(evaluator: COCOeval, max_dets: int) -> dict[str, float]:
    """The 12 numbers of ``COCOeval.summarize``, in percent, computed from ``evaluator.eval``.

    Done here rather than by ``summarize`` because that one only works for maxDets
    [1, 10, 100] (its AP line hard-codes 100, and it prints).
    """
    params = evaluator.params
    precision = evaluator.eval[
        "precision"
    ]  # (T iou thresholds, R recall points, K classes, A areas, M max dets)
    recall = evaluator.eval["recall"]  # (T, K, A, M)

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return _percent(float(values.mean())) if values.size else -1.0

    def select(array: np.ndarray, iou: float | None, area: str, dets: int) -> np.ndarray:
        if iou is not None:
            array = array[_index(params.iouThrs, iou) : _index(params.iouThrs, iou) + 1]
        return array[..., params.areaRngLbl.index(area), params.maxDets.index(dets)]

    queries = [
        (precision, None, "all", max_dets),
        (precision, 0.5, "all", max_dets),
        (precision, 0.75, "all", max_dets),
        (precision, None, "small", max_dets),
        (precision, None, "medium", max_dets),
        (precision, None, "large", max_dets),
        (recall, None, "all", 1),
        (recall, None, "all", 10),
        (recall, None, "all", max_dets),
        (recall, None, "small", max_dets),
        (recall, None, "medium", max_dets),
        (recall, None, "large", max_dets),
    ]
    return {
        name: mean(select(array, iou, area, dets))
        for name, (array, iou, area, dets) in zip(STAT_NAMES, queries, strict=True)
    }


def _prepare_results(
    results: Sequence[Mapping], iou_type: str, images: Sequence[Mapping], *, keep_boxes: bool = False
) -> list[dict]:
    """Copies of the results in the form ``COCO.loadRes`` handles for this iou type.

    bbox: a result without a box gets its mask's box. segm: boxes are dropped (so areas come
    from the masks; ``keep_boxes``: kept, plain pycocotools' areas) and every segmentation is read by :func:`refseg.masks.segmentation_to_rle`
    (polygons become RLE; an RLE of the wrong size or malformed counts is refused).
    """
    sizes = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in images}
    prepared = []
    for result in results:
        result = dict(result)
        segmentation = result.get("segmentation")
        if iou_type == "segm" or "bbox" not in result:
            if segmentation is None:
                raise InvalidInputError(
                    f"A result on image {result['image_id']} has no segmentation: evaluate box results "
                    "with iou_types=('bbox',)."
                )
            height, width = sizes[int(result["image_id"])]
            try:  # the mask module's checks: pycocotools' C code trusts what it is given
                result["segmentation"] = rle_to_json(segmentation_to_rle(segmentation, height, width))
            except InvalidInputError as error:
                raise InvalidInputError(f"A result on image {result['image_id']}: {error}") from None
        if iou_type == "segm" and not keep_boxes:
            result.pop("bbox", None)
        elif "bbox" not in result:
            result["bbox"] = rle_to_bbox(result["segmentation"])
        prepared.append(result)
    return prepared


def _per_class(
    evaluator: COCOeval, chosen: Sequence[tuple[str, int]], max_dets: int
) -> dict[str, dict[str, float]]:
    """AP, AP50 and AP75 of each class (area all, max_dets), in percent; -1 without gt."""
    precision = evaluator.eval["precision"]
    iou_thresholds = evaluator.params.iouThrs
    per_class = {}
    for k, (name, _) in enumerate(chosen):
        values = {}
        for key, selection in (("AP", slice(None)), ("AP50", _index(iou_thresholds, 0.5)),
                               ("AP75", _index(iou_thresholds, 0.75))):  # fmt: skip
            p = precision[selection, :, k, 0, evaluator.params.maxDets.index(max_dets)]
            p = p[p > -1]
            values[key] = _percent(float(p.mean())) if p.size else -1.0
        per_class[name] = values
    return per_class


def _index(values: np.ndarray, target: float) -> int:
    return int(np.argmin(np.abs(np.asarray(values) - target)))


def _percent(value: float) -> float:
    return -1.0 if value < 0 else float(value) * 100.0


def _coco_from_dict(data: Mapping) -> COCO:
    coco = COCO()
    coco.dataset = dict(data)
    coco.createIndex()
    return coco


def _silent(function, *args):
    """Run a pycocotools call with its prints sent to the debug log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        value = function(*args)
    if buffer.getvalue().strip():
        logger.debug("pycocotools: %s", buffer.getvalue().strip())
    return value


_LINES: tuple[tuple[str, str, str, str, int], ...] = (
    # (title, short, iou, area, maxdet index)
    ("Average Precision", "AP", "0.50:0.95", "all", 2),
    ("Average Precision", "AP", "0.50", "all", 2),
    ("Average Precision", "AP", "0.75", "all", 2),
    ("Average Precision", "AP", "0.50:0.95", "small", 2),
    ("Average Precision", "AP", "0.50:0.95", "medium", 2),
    ("Average Precision", "AP", "0.50:0.95", "large", 2),
    ("Average Recall", "AR", "0.50:0.95", "all", 0),
    ("Average Recall", "AR", "0.50:0.95", "all", 1),
    ("Average Recall", "AR", "0.50:0.95", "all", 2),
    ("Average Recall", "AR", "0.50:0.95", "small", 2),
    ("Average Recall", "AR", "0.50:0.95", "medium", 2),
    ("Average Recall", "AR", "0.50:0.95", "large", 2),
)


def format_table(summary: Mapping[str, Any], *, per_class: bool = True) -> str:
    """The summary as text: per iou type, the standard 12-line COCOeval table (values as
    fractions, exactly as pycocotools prints them), then per-class AP / AP50 / AP75 in percent.

    Args:
        summary: what :func:`evaluate` returned.
        per_class: add the per-class table.
    """
    max_dets = list(summary.get("max_dets", [1, 10, 100]))
    blocks = []
    for iou_type in IOU_TYPES:
        if iou_type not in summary:
            continue
        stats = summary[iou_type]
        lines = [f"IoU type: {iou_type}"]
        for (title, short, iou, area, det_index), name in zip(_LINES, STAT_NAMES, strict=True):
            value = stats[name]
            value = value if value < 0 else value / 100.0
            lines.append(
                f" {title:<18} ({short}) @[ IoU={iou:<9} | area={area:>6s} | "
                f"maxDets={max_dets[det_index]:>3d} ] = {value:0.3f}"
            )
        classes = summary.get("per_class", {}).get(iou_type, {})
        if per_class and classes:
            width = max(12, *(len(name) for name in classes))
            lines.append(f" {'class':<{width}}     AP   AP50   AP75")
            for name, values in classes.items():
                lines.append(
                    f" {name:<{width}} " + " ".join(f"{values[k]:6.1f}" for k in ("AP", "AP50", "AP75"))
                )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
