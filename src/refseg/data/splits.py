"""Class lists of the benchmarks, by split name, and resolving class names to category ids.

Split names (see :data:`SPLITS`):

- ``coco-all``: the 80 COCO categories, in COCO id order.
- ``coco-fsod-novel``: the 20 COCO-FSOD novel classes (the PASCAL VOC classes by their COCO
  names); ``coco-fsod-base``: the other 60.
- ``voc-all``: the 20 PASCAL VOC classes in VOC spelling, alphabetical (the VOC devkit order).
- ``voc-split-{1,2,3}``: the novel classes of the three PASCAL VOC few-shot splits of the
  TFA / FsDet protocol (also ``voc-split-N-novel``); ``voc-split-N-base``: its 15 base classes.

VOC and COCO spell six classes differently (``aeroplane``/``airplane``, ``diningtable``/``dining
table``, ``motorbike``/``motorcycle``, ``pottedplant``/``potted plant``, ``sofa``/``couch``,
``tvmonitor``/``tv``); :func:`resolve_classes` accepts either spelling against either data set.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

from ..errors import InvalidInputError

#: The 80 COCO categories: (category id, name), as in instances_*2017.json.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)  # fmt: skip

COCO_CLASSES: tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)

#: The 20 COCO-FSOD novel classes (METHOD.md section 5), in the paper's order.
COCO_FSOD_NOVEL: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat",
    "dog", "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv",
)  # fmt: skip

COCO_FSOD_BASE: tuple[str, ...] = tuple(name for name in COCO_CLASSES if name not in COCO_FSOD_NOVEL)

#: The 20 PASCAL VOC classes in VOC spelling, in the devkit's (alphabetical) order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

#: Novel classes of the PASCAL VOC few-shot splits (TFA / FsDet protocol).
VOC_NOVEL_SPLITS: dict[int, tuple[str, ...]] = {
    1: ("bird", "bus", "cow", "motorbike", "sofa"),
    2: ("aeroplane", "bottle", "cow", "horse", "sofa"),
    3: ("boat", "cat", "motorbike", "sheep", "sofa"),
}

#: VOC spelling -> COCO spelling for the six classes named differently.
VOC_TO_COCO: dict[str, str] = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}
COCO_TO_VOC: dict[str, str] = {coco: voc for voc, coco in VOC_TO_COCO.items()}


def _voc_base(split: int) -> tuple[str, ...]:
    return tuple(name for name in VOC_CLASSES if name not in VOC_NOVEL_SPLITS[split])


#: Every named class list.
SPLITS: dict[str, tuple[str, ...]] = {
    "coco-all": COCO_CLASSES,
    "coco-fsod-novel": COCO_FSOD_NOVEL,
    "coco-fsod-base": COCO_FSOD_BASE,
    "voc-all": VOC_CLASSES,
    **{f"voc-split-{k}": novel for k, novel in VOC_NOVEL_SPLITS.items()},
    **{f"voc-split-{k}-novel": novel for k, novel in VOC_NOVEL_SPLITS.items()},
    **{f"voc-split-{k}-base": _voc_base(k) for k in VOC_NOVEL_SPLITS},
}


def split_classes(name: str) -> list[str]:
    """The class names of a named split (see :data:`SPLITS`).

    Raises:
        InvalidInputError: unknown split name (close matches are suggested).
    """
    try:
        return list(SPLITS[name])
    except KeyError:
        close = difflib.get_close_matches(name, list(SPLITS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InvalidInputError(f"Unknown split {name!r}.{hint} Known splits: {', '.join(SPLITS)}.") from None


def _normalise(name: str) -> str:
    """Case-, space-, underscore- and hyphen-insensitive key of a class name."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


_ALIASES: dict[str, str] = {
    **{_normalise(voc): _normalise(coco) for voc, coco in VOC_TO_COCO.items()},
    **{_normalise(coco): _normalise(voc) for voc, coco in VOC_TO_COCO.items()},
}

CategoriesLike = Mapping[str, int] | Sequence[Mapping] | Mapping[str, object]


def _category_pairs(categories: CategoriesLike) -> list[tuple[str, int]]:
    """(name, id) pairs from a COCO dict, a COCO ``categories`` list or a name -> id mapping."""
    if isinstance(categories, Mapping):
        if "categories" in categories and isinstance(categories["categories"], list):
            categories = categories["categories"]
        else:
            return [(str(name), int(cid)) for name, cid in categories.items()]  # type: ignore[arg-type]
    pairs = []
    for category in categories:
        try:
            pairs.append((str(category["name"]), int(category["id"])))
        except (KeyError, TypeError, ValueError):
            raise InvalidInputError(
                f"Bad category entry {category!r}: every category needs a 'name' and an integer 'id'."
            ) from None
    return pairs


def _requested_names(spec: str | Sequence[str | int]) -> list[str | int]:
    if isinstance(spec, str):
        spec = spec.strip()
        if spec in SPLITS:
            return list(SPLITS[spec])
        names: list[str | int] = [part.strip() for part in spec.split(",") if part.strip()]
    else:
        names = []
        for item in spec:
            if isinstance(item, str) and item.strip() in SPLITS:
                names.extend(SPLITS[item.strip()])
            else:
                names.append(item.strip() if isinstance(item, str) else item)
    if not names:
        raise InvalidInputError("No classes given: pass a split name or one or more class names.")
    return names


def resolve_classes(spec: str | Sequence[str | int], categories: CategoriesLike) -> list[tuple[str, int]]:
    """Look classes up in a data set's categories.

    Args:
        spec: a split name (``"coco-fsod-novel"``, ``"voc-split-1"``, ...), a comma-separated
            string of class names (``"cat,dog"``), or a list of class names, split names or
            integer category ids.
        categories: a COCO dict, its ``categories`` list, or a ``{name: id}`` mapping.

    Returns:
        (name, category_id) per requested class, in the requested order, without duplicates;
        ``name`` is spelled as in ``categories``. Names match exactly, else ignoring case,
        spaces, ``_`` and ``-``, else through the VOC <-> COCO spelling table.

    Raises:
        InvalidInputError: a name or id is not among the categories (close matches are
            suggested) or nothing was asked for.
    """
    pairs = _category_pairs(categories)
    exact = {name: cid for name, cid in pairs}
    loose: dict[str, tuple[str, int]] = {}
    for name, cid in pairs:
        loose.setdefault(_normalise(name), (name, cid))
    by_id = {cid: name for name, cid in pairs}

    resolved: list[tuple[str, int]] = []
    unknown: list[str] = []
    for item in _requested_names(spec):
        if isinstance(item, int) and not isinstance(item, bool):
            match = (by_id[item], item) if item in by_id else None
        elif item in exact:
            match = (item, exact[item])
        else:
            key = _normalise(str(item))
            match = loose.get(key) or loose.get(_ALIASES.get(key, ""))
        if match is None:
            unknown.append(str(item))
        elif match not in resolved:
            resolved.append(match)
    if unknown:
        names = [name for name, _ in pairs]
        hints = []
        for item in unknown:
            close = difflib.get_close_matches(item, names, n=3, cutoff=0.6)
            hints.append(f"{item!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        raise InvalidInputError(
            f"Unknown class{'es' if len(unknown) > 1 else ''}: {'; '.join(hints)}. "
            f"The data set has {len(names)} categories: {shown}.{split_hint(unknown)}"
        )
    return resolved


def split_hint(unknown: Sequence[str]) -> str:
    """`` Split names: ...`` (with a guess) when an unknown name looks like a misspelt split name."""
    guesses = [
        close for item in unknown for close in difflib.get_close_matches(item, list(SPLITS), n=1, cutoff=0.75)
    ]
    if not guesses and not any(re.search(r"split|^coco-|^voc-|fsod", item) for item in unknown):
        return ""
    guess = f" Did you mean the split {guesses[0]}?" if guesses else ""
    return f"{guess} Split names: {', '.join(SPLITS)}."
