"""The files of a run's results, written by one function for ``refseg predict`` and the web app,
and read back, checked, for evaluation (:func:`load_results`).

``<out>`` is the results path the user named:

- ``<out>``: COCO results, a json list of ``{image_id, category_id, bbox, score, segmentation}``.
- ``<out>.images.json``: ``{"images": [{id, file_name, height, width}], "categories": [{id, name}]}``,
  the stable file name -> image id mapping, so the results can be evaluated.
- ``<out>.errors.json``: the images that could not be read (only when there are some).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.coco import is_int, write_json
from .errors import InvalidInputError
from .masks import box_numbers


@dataclass(frozen=True)
class ResultFiles:
    """Where :func:`write_results` wrote (``errors`` is None when no errors file was written)."""

    results: Path
    images: Path
    errors: Path | None = None


def sidecar_path(out_path: str | os.PathLike, kind: str) -> Path:
    """``<out>.<kind>.json`` (``images`` or ``errors``)."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.{kind}.json")


def categories_of(category_ids: Mapping[str, int] | None) -> list[dict[str, Any]]:
    """``[{"id", "name"}]`` in category id order (empty when no ids are known)."""
    if not category_ids:
        return []
    return [{"id": int(i), "name": name} for name, i in sorted(category_ids.items(), key=lambda kv: kv[1])]


def write_results(
    out_path: str | os.PathLike,
    results: Sequence[Mapping[str, Any]],
    images: Sequence[Mapping[str, Any]],
    category_ids: Mapping[str, int] | None,
    *,
    errors: Sequence[Mapping[str, Any]] | None = None,
) -> ResultFiles:
    """Write the COCO results json and its sidecars (each atomically).

    Args:
        out_path: the results json.
        results: COCO result dicts (``Instances.to_coco``).
        images: ``{id, file_name, height, width}`` of every image that was segmented.
        category_ids: class name -> category id, for the ``categories`` list.
        errors: the images that could not be read: written to ``<out>.errors.json`` when not
            empty, and a stale errors file of an earlier run is removed when empty. None leaves
            the errors file alone (a caller that does not report errors).

    Returns:
        The paths written.
    """
    results_path = write_json(list(results), out_path)
    images_path = write_json(
        {"images": list(images), "categories": categories_of(category_ids)}, sidecar_path(out_path, "images")
    )
    errors_path = None
    if errors is not None:
        errors_path = sidecar_path(out_path, "errors")
        if errors:
            write_json(list(errors), errors_path)
        else:
            errors_path.unlink(missing_ok=True)
            errors_path = None
    return ResultFiles(results_path, images_path, errors_path)


def load_results(results: str | os.PathLike | Sequence[Mapping]) -> list[dict]:
    """A results list from a json path or a list, checked for the keys COCOeval needs.

    Raises:
        InvalidInputError: missing file, bad json, not a list, or a result missing image_id,
            category_id, score, or both bbox and segmentation.
    """
    if isinstance(results, str | os.PathLike):
        path = Path(results)
        if not path.is_file():
            raise InvalidInputError(f"Results json not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise InvalidInputError(f"{path} is not valid json: {error}") from error
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            data = data["annotations"]  # a COCO-style file holding results as annotations
        source = str(path)
    else:
        data, source = results, "results"
    if not isinstance(data, list | tuple):
        raise InvalidInputError(f"{source}: expected a list of result dicts, got {type(data).__name__}.")
    checked = []
    for index, result in enumerate(data):
        if not isinstance(result, Mapping):
            raise InvalidInputError(f"{source}: result #{index} is not an object.")
        missing = [key for key in ("image_id", "category_id", "score") if key not in result]
        if missing:
            raise InvalidInputError(f"{source}: result #{index} lacks {', '.join(map(repr, missing))}.")
        if "bbox" not in result and "segmentation" not in result:
            raise InvalidInputError(f"{source}: result #{index} has neither a bbox nor a segmentation.")
        _check_result(result, f"{source}: result #{index}")
        checked.append(dict(result))
    return checked


def _check_result(result: Mapping, where: str) -> None:
    """Field types pycocotools needs: integer ids, a finite score, a box of four finite numbers
    (w, h >= 0), a segmentation that is polygons or an RLE."""
    for key in ("image_id", "category_id"):
        if not is_int(result[key]):
            raise InvalidInputError(f"{where}: {key!r} must be an integer, got {result[key]!r}.")
    score = result["score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise InvalidInputError(f"{where}: 'score' must be a finite number, got {score!r}.")
    if "bbox" in result:
        _x, _y, w, h = box_numbers(result["bbox"], what=f"{where}: 'bbox'")
        if w < 0 or h < 0:
            raise InvalidInputError(
                f"{where}: 'bbox' must be x, y, w, h with w, h >= 0, got {result['bbox']!r}."
            )
    segmentation = result.get("segmentation")
    if "segmentation" in result and not (
        isinstance(segmentation, list) or (isinstance(segmentation, Mapping) and "counts" in segmentation)
    ):
        raise InvalidInputError(f"{where}: 'segmentation' must be polygons or an RLE, got {segmentation!r}.")
