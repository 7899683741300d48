"""The files of a run's results, written by one function for ``refseg predict`` and the web app.

``<out>`` is the results path the user named:

- ``<out>``: COCO results, a json list of ``{image_id, category_id, bbox, score, segmentation}``.
- ``<out>.images.json``: ``{"images": [{id, file_name, height, width}], "categories": [{id, name}]}``,
  the stable file name -> image id mapping, so the results can be evaluated.
- ``<out>.errors.json``: the images that could not be read (only when there are some).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.coco import write_json


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
