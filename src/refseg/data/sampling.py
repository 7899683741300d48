"""Few-shot reference sampling (METHOD.md section 5).

Per class, the class's annotations are shuffled with a seeded RNG and walked in that order;
an annotation is skipped if it is a crowd region, its box is under ``min_size`` px on a side
(w < 32 or h < 32), it lies within ``border`` px of the image border (x < 10, y < 10,
W - (x + w) < 10 or H - (y + h) < 10), or its image already gave that class a shot. The walk
stops at K shots. Each shot is one instance from a distinct image (within a class; two
classes may draw from the same image).

Random numbers: one ``random.Random(seed)`` for the whole draw. Each class's candidate list
(all its annotations, crowd and small ones included, as (image_id, annotation_id) pairs in
file order) is shuffled in turn with ``Random.shuffle``, classes taken in the order their
first annotation appears in the file. This is the draw of the research code (which seeds
Python's ``random`` once and shuffles per class in that order), so for the same class set the
same seed picks the same references as the paper's (seed 33 for its main results). A class's
draw therefore also depends on which classes come before it in the file among those sampled.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence

from ..errors import InvalidInputError
from .coco import check_coco, is_int
from .splits import resolve_classes

logger = logging.getLogger(__name__)

MIN_SIZE = 32
BORDER = 10


def is_valid_reference(
    annotation: Mapping, image_info: Mapping, *, min_size: float = MIN_SIZE, border: float = BORDER
) -> bool:
    """Whether an annotation may be a reference: not crowd, big enough, away from the border.

    Args:
        annotation: a COCO annotation with ``bbox`` (x, y, w, h).
        image_info: its image's entry (``width``, ``height``).
        min_size: smallest allowed box side in pixels (w < min_size or h < min_size is rejected).
        border: smallest allowed distance in pixels between the box and each image side.
    """
    if int(annotation.get("iscrowd", 0)) == 1:
        return False
    bbox = annotation.get("bbox")
    if bbox is None or len(bbox) != 4:
        return False
    x, y, w, h = (float(v) for v in bbox)
    if w < min_size or h < min_size:
        return False
    width, height = float(image_info["width"]), float(image_info["height"])
    return not (x < border or y < border or width - (x + w) < border or height - (y + h) < border)


def sample_references(
    coco: Mapping,
    class_names: str | Sequence[str],
    shots: int,
    seed: int,
    *,
    min_size: float = MIN_SIZE,
    border: float = BORDER,
) -> dict:
    """Draw K reference instances per class from a COCO data set.

    Args:
        coco: a COCO dict (images, annotations, categories), e.g. COCO train2017.
        class_names: the classes to sample, as for :func:`refseg.data.splits.resolve_classes`
            (a split name such as ``"coco-fsod-novel"``, ``"cat,dog"`` or a list of names).
        shots: K, references per class (>= 1).
        seed: the RNG seed (33 for the paper's main results).
        min_size, border: the validity rules of :func:`is_valid_reference`.

    Returns:
        A standard COCO dict with only the drawn annotations (per class, in draw order), the
        images they lie on (each once, in first-use order), the chosen categories (in the
        requested order) and ``info`` recording ``classes``, ``shots``, ``seed``, ``min_size``,
        ``border`` and ``shortfall`` (class -> shots found, for classes with fewer than K).
        Same input and seed -> identical output.

    Raises:
        InvalidInputError: unknown class, ``shots`` < 1, or a malformed COCO dict
            (:func:`refseg.data.coco.check_coco`).
    """
    if not is_int(shots) or shots < 1:
        raise InvalidInputError(f"shots must be an integer, at least 1, got {shots!r}.")
    shots = int(shots)
    coco = check_coco(dict(coco), source="the COCO data")
    chosen = resolve_classes(class_names, coco)
    chosen_ids = {category_id for _, category_id in chosen}
    images = {int(image["id"]): image for image in coco["images"]}

    candidates: dict[int, list[tuple[int, int]]] = {}  # category id -> (image id, position), file order
    for position, annotation in enumerate(coco["annotations"]):
        category_id = int(annotation["category_id"])
        if category_id in chosen_ids:
            candidates.setdefault(category_id, []).append((int(annotation["image_id"]), position))

    rng = random.Random(seed)
    drawn: dict[int, list[int]] = {}  # category id -> annotation positions
    for category_id, pool in candidates.items():  # order of first appearance in the file
        rng.shuffle(pool)
        drawn[category_id] = _walk(pool, coco["annotations"], images, shots, min_size, border)

    shortfall: dict[str, int] = {}
    annotations: list[dict] = []
    used_images: dict[int, dict] = {}
    for name, category_id in chosen:
        positions = drawn.get(category_id, [])
        if len(positions) < shots:
            shortfall[name] = len(positions)
            logger.warning(
                "class %r: only %d of %d shots available (after skipping crowd, small and border "
                "annotations and repeated images)",
                name,
                len(positions),
                shots,
            )
        for position in positions:
            annotation = dict(coco["annotations"][position])
            annotations.append(annotation)
            image_id = int(annotation["image_id"])
            used_images.setdefault(image_id, images[image_id])

    categories_by_id = {int(c["id"]): c for c in coco["categories"]}
    return {
        "info": {
            "description": f"refseg reference sample: {shots} shot(s) per class, seed {seed}",
            "classes": [name for name, _ in chosen],
            "shots": shots,
            "seed": seed,
            "min_size": min_size,
            "border": border,
            "shortfall": shortfall,
        },
        "licenses": list(coco.get("licenses", [])),
        "images": [dict(image) for image in used_images.values()],
        "annotations": annotations,
        "categories": [dict(categories_by_id[category_id]) for _, category_id in chosen],
    }


def _walk(
    pool: list[tuple[int, int]],
    annotations: Sequence[Mapping],
    images: Mapping[int, Mapping],
    shots: int,
    min_size: float,
    border: float,
) -> list[int]:
    """Positions of the first ``shots`` valid annotations of ``pool`` on distinct images."""
    taken: list[int] = []
    seen_images: set[int] = set()
    for image_id, position in pool:
        image = images.get(image_id)
        if image is None:
            logger.warning("annotation #%d refers to unknown image %d: skipped", position, image_id)
            continue
        if image_id in seen_images:
            continue
        if not is_valid_reference(annotations[position], image, min_size=min_size, border=border):
            continue
        seen_images.add(image_id)
        taken.append(position)
        if len(taken) >= shots:
            break
    return taken
