"""Class splits, class-name resolution and few-shot reference sampling (docs/method.md 9.1-9.2)."""

from __future__ import annotations

import json
import logging
import random

import pytest
from cocodata import synthesize_coco

from refseg.data.sampling import is_valid_reference, sample_references
from refseg.data.splits import (
    COCO_CATEGORIES,
    COCO_FSOD_NOVEL,
    SPLITS,
    VOC_CLASSES,
    VOC_TO_COCO,
    resolve_classes,
    split_classes,
)
from refseg.errors import InvalidInputError

COCO_CATS = [{"id": cid, "name": name} for cid, name in COCO_CATEGORIES]

# ---------------------------------------------------------------- splits


def test_split_sizes_and_membership() -> None:
    assert len(SPLITS["coco-all"]) == 80 and len(set(SPLITS["coco-all"])) == 80
    assert len({cid for cid, _ in COCO_CATEGORIES}) == 80 and max(cid for cid, _ in COCO_CATEGORIES) == 90
    assert len(SPLITS["coco-fsod-novel"]) == 20 and set(COCO_FSOD_NOVEL) <= set(SPLITS["coco-all"])
    assert set(SPLITS["coco-fsod-base"]) == set(SPLITS["coco-all"]) - set(COCO_FSOD_NOVEL)
    assert len(SPLITS["voc-all"]) == 20
    for k in (1, 2, 3):
        novel, base = SPLITS[f"voc-split-{k}"], SPLITS[f"voc-split-{k}-base"]
        assert len(novel) == 5 and len(base) == 15 and set(novel) | set(base) == set(VOC_CLASSES)
        assert SPLITS[f"voc-split-{k}-novel"] == novel
    assert split_classes("voc-split-1") == ["bird", "bus", "cow", "motorbike", "sofa"]
    assert split_classes("voc-split-2") == ["aeroplane", "bottle", "cow", "horse", "sofa"]
    assert split_classes("voc-split-3") == ["boat", "cat", "motorbike", "sheep", "sofa"]


def test_voc_classes_are_the_coco_fsod_novel_classes() -> None:
    as_coco = {VOC_TO_COCO.get(name, name) for name in VOC_CLASSES}
    assert as_coco == set(COCO_FSOD_NOVEL)


def test_unknown_split_suggests() -> None:
    with pytest.raises(InvalidInputError, match="Did you mean voc-split-1"):
        split_classes("voc-splt-1")


def test_resolve_split_names_against_coco() -> None:
    resolved = resolve_classes("coco-fsod-novel", COCO_CATS)
    assert [name for name, _ in resolved] == list(COCO_FSOD_NOVEL)
    assert dict(resolved)["tv"] == 72 and dict(resolved)["dining table"] == 67


def test_resolve_voc_spelling_against_coco_and_back() -> None:
    assert resolve_classes("voc-split-1", COCO_CATS) == [
        ("bird", 16), ("bus", 6), ("cow", 21), ("motorcycle", 4), ("couch", 63)
    ]  # fmt: skip
    voc_cats = [{"id": k + 1, "name": name} for k, name in enumerate(VOC_CLASSES)]
    assert resolve_classes(["couch", "TV", "potted plant"], voc_cats) == [
        ("sofa", 18), ("tvmonitor", 20), ("pottedplant", 16)
    ]  # fmt: skip


def test_resolve_forms_of_spec() -> None:
    cats = {"cat": 17, "dog": 18, "Hot Dog": 58}
    assert resolve_classes("cat, dog", cats) == [("cat", 17), ("dog", 18)]
    assert resolve_classes(["dog", "cat", "dog"], cats) == [("dog", 18), ("cat", 17)]
    assert resolve_classes(["hot_dog", 17], cats) == [("Hot Dog", 58), ("cat", 17)]
    assert resolve_classes("cat", {"categories": [{"id": 5, "name": "cat"}]}) == [("cat", 5)]


def test_resolve_unknown_class_suggests_close_matches() -> None:
    with pytest.raises(InvalidInputError, match=r"'cta' \(did you mean 'cat'\?\).*2 categories"):
        resolve_classes("cta,dog", {"cat": 1, "dog": 2})
    with pytest.raises(InvalidInputError, match="Unknown class"):
        resolve_classes([99], {"cat": 1})
    with pytest.raises(InvalidInputError, match="No classes given"):
        resolve_classes(" , ", {"cat": 1})
    with pytest.raises(InvalidInputError, match="Bad category entry"):
        resolve_classes("cat", [{"name": "cat"}])


# ---------------------------------------------------------------- validity rules


@pytest.mark.parametrize(
    ("bbox", "iscrowd", "valid"),
    [
        ([10, 10, 32, 32], 0, True),  # exactly at the limits
        ([10, 10, 31.9, 40], 0, False),  # too narrow
        ([10, 10, 40, 31.5], 0, False),  # too short
        ([9.9, 10, 40, 40], 0, False),  # near the left border
        ([10, 9.9, 40, 40], 0, False),  # near the top border
        ([50, 10, 40, 40], 0, True),  # right gap exactly 10 (100 - 90)
        ([50.5, 10, 40, 40], 0, False),  # right gap 9.5
        ([10, 30.1, 40, 40], 0, False),  # bottom gap 9.9 (80 - 70.1)
        ([20, 20, 40, 40], 1, False),  # crowd
    ],
)
def test_is_valid_reference(bbox: list[float], iscrowd: int, valid: bool) -> None:
    assert is_valid_reference({"bbox": bbox, "iscrowd": iscrowd}, {"width": 100, "height": 80}) is valid


# ---------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def pool() -> dict:
    """12 images, 3 classes, 3 valid objects each plus small, border and crowd annotations."""
    return synthesize_coco(
        12, ("cat", "dog", "bird"), objects_per_image=3, image_size=(140, 180), seed=3
    ).coco


def reference_draw(coco: dict, category_ids: set[int], shots: int, seed: int) -> dict[int, list[int]]:
    """The research code's draw, written independently: seed one RNG, per class (in order of
    first appearance) shuffle its (image id, annotation id) list, keep valid annotations on
    new images until K."""
    rng = random.Random(seed)
    per_class: dict[int, list[tuple[int, int]]] = {}
    for a in coco["annotations"]:
        if a["category_id"] in category_ids:
            per_class.setdefault(a["category_id"], []).append((a["image_id"], a["id"]))
    images = {i["id"]: i for i in coco["images"]}
    anns = {a["id"]: a for a in coco["annotations"]}
    drawn = {}
    for cid, items in per_class.items():
        rng.shuffle(items)
        chosen, used = [], []
        for image_id, ann_id in items:
            a, info = anns[ann_id], images[image_id]
            x, y, w, h = a["bbox"]
            if a["iscrowd"] or w < 32 or h < 32:
                continue
            if x < 10 or y < 10 or info["width"] - (x + w) < 10 or info["height"] - (y + h) < 10:
                continue
            if image_id in used:
                continue
            used.append(image_id)
            chosen.append(ann_id)
            if len(chosen) >= shots:
                break
        drawn[cid] = chosen
    return drawn


@pytest.mark.parametrize(("shots", "seed"), [(1, 33), (3, 33), (5, 7)])
def test_sampling_follows_the_protocol(pool: dict, shots: int, seed: int) -> None:
    sample = sample_references(pool, ["cat", "dog", "bird"], shots, seed)
    expected = reference_draw(pool, {17, 18, 16}, shots, seed)
    by_class: dict[int, list[int]] = {}
    for a in sample["annotations"]:
        by_class.setdefault(a["category_id"], []).append(a["id"])
    assert by_class == expected
    for ids in by_class.values():
        assert len(ids) == shots
        annotations = [a for a in sample["annotations"] if a["id"] in ids]
        assert all(a["synthetic"] == "object" for a in annotations)  # never crowd, small or border
        assert len({a["image_id"] for a in annotations}) == shots  # distinct images within a class


def test_sampling_is_deterministic_and_seed_dependent(pool: dict) -> None:
    first = sample_references(pool, "cat,dog", 3, seed=42)
    again = sample_references(pool, "cat,dog", 3, seed=42)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    draws = {
        tuple(a["id"] for a in sample_references(pool, "cat,dog", 3, seed=s)["annotations"]) for s in range(6)
    }
    assert len(draws) > 1


def test_sample_is_a_standard_coco_file(pool: dict) -> None:
    sample = sample_references(pool, ["bird", "cat"], 2, seed=1)
    assert [c["name"] for c in sample["categories"]] == ["bird", "cat"]
    assert sample["info"]["classes"] == ["bird", "cat"]
    assert (sample["info"]["shots"], sample["info"]["seed"], sample["info"]["shortfall"]) == (2, 1, {})
    image_ids = [i["id"] for i in sample["images"]]
    assert len(image_ids) == len(set(image_ids))
    assert set(image_ids) == {a["image_id"] for a in sample["annotations"]}
    assert [a["category_id"] for a in sample["annotations"]] == [
        16,
        16,
        17,
        17,
    ]  # class order, then draw order
    json.dumps(sample)
    assert len(pool["annotations"]) > len(sample["annotations"])  # the input is untouched


def test_shortfall_is_logged_and_recorded(pool: dict, caplog: pytest.LogCaptureFixture) -> None:
    available = len(
        {a["image_id"] for a in pool["annotations"] if a["category_id"] == 17 and a["synthetic"] == "object"}
    )
    with caplog.at_level(logging.WARNING, logger="refseg.data.sampling"):
        sample = sample_references(pool, ["cat"], 100, seed=0)
    assert sample["info"]["shortfall"] == {"cat": available}
    assert len(sample["annotations"]) == available
    assert "only" in caplog.text and "'cat'" in caplog.text


def test_class_without_annotations_gets_zero_shots(pool: dict) -> None:
    coco = {**pool, "categories": [*pool["categories"], {"id": 500, "name": "zebra"}]}
    sample = sample_references(coco, ["zebra", "cat"], 1, seed=0)
    assert sample["info"]["shortfall"] == {"zebra": 0}
    assert [c["name"] for c in sample["categories"]] == ["zebra", "cat"]


def test_sampling_rejects_bad_arguments(pool: dict) -> None:
    with pytest.raises(InvalidInputError, match="at least 1"):
        sample_references(pool, ["cat"], 0, seed=0)
    with pytest.raises(InvalidInputError, match="did you mean 'cat'"):
        sample_references(pool, ["cta"], 1, seed=0)


def test_custom_rules(pool: dict) -> None:
    """Without the size and border rules every image with a non-crowd annotation of a class
    gives that class one shot."""
    loose = sample_references(pool, ["cat", "dog", "bird"], 50, seed=0, min_size=0, border=0)
    for cid in (16, 17, 18):
        eligible = {
            a["image_id"] for a in pool["annotations"] if a["category_id"] == cid and not a["iscrowd"]
        }
        drawn = [a["image_id"] for a in loose["annotations"] if a["category_id"] == cid]
        assert sorted(drawn) == sorted(eligible)
    assert "crowd" not in {a["synthetic"] for a in loose["annotations"]}
