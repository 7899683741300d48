"""The results as the page shows them: one large view, a strip of thumbnails, the files.

The large view is a picture canvas in "select" mode (:mod:`refseg.app.views`): the target's
preview with every instance shown tinted in its class colour, a tag "class score" at each
instance drawn by the page as text (legible whatever the picture's size), and a legend of the
classes with their colours and counts. A click selects the smallest instance under it
(:func:`pick_instance`): the one a person means when a small object lies on a larger one.
Nothing here recomputes: the score threshold only filters what was found.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..instances import Instances
from ..results import write_results
from ..viz import class_color, draw_instances
from .session import SessionState, TargetResult
from .views import hex_colour, instances_overlay, picture_view

STRIP_SIDE = 240


def shown_indices(result: TargetResult, threshold: float) -> list[int]:
    """Indices of the instances scoring at least ``threshold``, best first."""
    return [int(i) for i in np.flatnonzero(result.instances.scores >= threshold)]


def pick_instance(result: TargetResult, threshold: float, x: float, y: float) -> int | None:
    """The smallest shown instance whose mask holds the original pixel under (x, y), or None.

    Args:
        x, y: continuous original pixels (pixel i spans [i, i+1)).
    """
    column = min(max(int(x), 0), result.picture.width - 1)
    row = min(max(int(y), 0), result.picture.height - 1)
    masks = result.instances.masks
    hits = [(int(masks[i].sum()), i) for i in shown_indices(result, threshold) if masks[i][row, column]]
    return min(hits)[1] if hits else None


def describe_instance(result: TargetResult, index: int) -> str:
    """ "#3 cat (score 0.91)"."""
    instances = result.instances
    return f"#{index + 1} {instances.names[index]} (score {float(instances.scores[index]):.2f})"


def result_view(
    result: TargetResult, threshold: float, selected: int | None, seq: int, caption: str | None = None
) -> dict[str, Any]:
    """The large view of one result, its ``selected`` instance highlighted."""
    instances = result.instances
    shown = shown_indices(result, threshold)
    names = instances.names
    colours = [class_color(names[i]) for i in shown]
    overlay = instances_overlay(
        [result.preview_masks[i] for i in shown],
        colours,
        shown.index(selected) if selected in shown else None,
    )
    labels = [
        {
            "x": round(float(instances.boxes[i][0]), 2),
            "y": round(float(instances.boxes[i][1]), 2),
            "text": f"{names[i]} {float(instances.scores[i]):.2f}",
            "colour": hex_colour(colour),
            "selected": i == selected,
        }
        for i, colour in zip(shown, colours, strict=True)
    ]
    counts = {name: 0 for name in instances.class_names}
    for i in shown:
        counts[names[i]] += 1
    legend = [{"name": n, "colour": hex_colour(class_color(n)), "count": c} for n, c in counts.items()]
    if caption is None:
        caption = (
            f"{result.name}: {len(shown)} instance(s) at score >= {threshold:.2f}. Click one to correct it."
        )
    return picture_view(
        result.picture,
        mode="select",
        seq=seq,
        caption_text=caption,
        overlay=overlay,
        labels=labels,
        legend=legend,
    )


def _preview_instances(result: TargetResult, shown: list[int]) -> Instances:
    """The shown instances at the preview's size (masks and boxes scaled)."""
    instances = result.instances
    scale = result.picture.preview.shape[1] / result.picture.width
    return Instances(
        masks=result.preview_masks[shown].reshape(len(shown), *result.picture.preview.shape[:2]),
        boxes=instances.boxes[shown] * scale,
        scores=instances.scores[shown],
        labels=instances.labels[shown],
        class_names=list(instances.class_names),
    )


def result_strip(state: SessionState, threshold: float) -> list[tuple[Image.Image, str]]:
    """(thumbnail, caption) per result: the strip under the large view."""
    strip = []
    for number, result in enumerate(state.results, start=1):
        shown = shown_indices(result, threshold)
        picture = draw_instances(result.picture.preview, _preview_instances(result, shown), show_labels=False)
        picture.thumbnail((STRIP_SIDE, STRIP_SIDE))
        strip.append((picture, f"{number}: {result.name} ({len(shown)})"))
    return strip


def result_files(state: SessionState, threshold: float) -> list[str]:
    """``results.json`` (COCO results of the instances shown) and ``results.json.images.json``
    (image id -> file name, categories), as ``refseg predict`` writes them (boxes in the run's
    preset's convention, as there); [] without results."""
    if not state.results:
        return []
    category_ids = state.result_categories  # the run's: classes may have been removed since
    coco, images = [], []
    for image_id, result in enumerate(state.results, start=1):
        shown = result.instances.filter(threshold)
        coco.extend(shown.to_coco(image_id, category_ids, box_convention=state.result_box_convention))
        images.append(
            {
                "id": image_id,
                "file_name": result.name,
                "height": result.picture.height,
                "width": result.picture.width,
            }
        )
    files = write_results(state.folder() / "results.json", coco, images, category_ids)
    return [str(files.results), str(files.images)]
