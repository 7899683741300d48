"""Negative references on synthetic scenes whose answer is known.

The class "toy" is shown by a red and a blue example; purple objects are no toy, but the
synthetic encoder sees purple as red and blue alike, so a purple object is nearer to the toy
prototype than the toys themselves (the prototype is their mean): the paper's method finds the
purple ones first. One "not a toy" example (or one background example) of purple fixes it
under a preset with ``negatives`` on, and changes nothing under ``paper``.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import Scene, SyntheticEncoder, SyntheticProposer, coco_ap, make_scene, scene_ground_truth

from refseg import Instances, MemoryBank, Segmenter

TARGET_SEEDS = (0, 1)


def toy_segmenter(preset: str) -> Segmenter:
    segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder(lookalikes=True), preset=preset)
    reference = make_scene(100, classes=("red", "blue"), per_class=1)
    for mask in reference.masks:
        segmenter.add_reference(reference.image, "toy", mask=mask, source={"scene": 100})
    return segmenter


def add_purple_negative(segmenter: Segmenter, class_name: str | None) -> int:
    example = make_scene(200, classes=("purple",), per_class=1)
    return segmenter.add_reference(example.image, class_name, mask=example.masks[0], negative=True)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [make_scene(seed, classes=("red", "blue", "purple")) for seed in TARGET_SEEDS]


@pytest.fixture(scope="module")
def paper_predictions(scenes) -> list[Instances]:
    """The paper's method with a memory without negatives."""
    return predict_all(toy_segmenter("paper"), scenes)


@pytest.fixture(scope="module")
def paper_neg_predictions(scenes) -> list[Instances]:
    """The preset with negatives on, with a memory without negatives."""
    return predict_all(toy_segmenter("paper-neg"), scenes)


def toys_only(scene: Scene) -> Scene:
    kept = [(mask, name) for mask, name in zip(scene.masks, scene.classes, strict=True) if name != "purple"]
    return Scene(scene.image, [mask for mask, _ in kept], ["toy"] * len(kept))


def predict_all(segmenter: Segmenter, scenes: list[Scene]) -> list[Instances]:
    return [segmenter.predict(scene.image) for scene in scenes]


def average_precision(
    predictions: list[Instances], scenes: list[Scene], segmenter: Segmenter
) -> dict[str, float]:
    results = []
    for image_id, instances in enumerate(predictions, start=1):
        results += instances.to_coco(image_id, segmenter.memory.category_ids)
    return coco_ap(scene_ground_truth([toys_only(s) for s in scenes], ["toy"]), results)


def purple_scores(predictions: list[Instances], scenes: list[Scene]) -> list[float]:
    """The score of every instance that is mostly a purple object."""
    found = []
    for instances, scene in zip(predictions, scenes, strict=True):
        purple = [m for m, name in zip(scene.masks, scene.classes, strict=True) if name == "purple"]
        for mask, score in zip(instances.masks, instances.scores, strict=True):
            if any((mask & p).sum() > 0.5 * mask.sum() for p in purple):
                found.append(float(score))
    return found


def assert_same(a: list[Instances], b: list[Instances]) -> None:
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.masks, y.masks)
        assert np.array_equal(x.scores, y.scores)  # exactly: same floats
        assert np.array_equal(x.labels, y.labels) and np.array_equal(x.boxes, y.boxes)


def test_without_negatives_the_lookalikes_are_found_first(scenes, paper_neg_predictions) -> None:
    segmenter = toy_segmenter("paper-neg")
    predictions = paper_neg_predictions
    stats = average_precision(predictions, scenes, segmenter)
    assert stats["bbox"] < 0.9 and stats["segm"] < 0.9
    true_scores = [float(s) for p in predictions for s in p.scores if s > 0.5]
    assert (
        purple_scores(predictions, scenes)
        and max(purple_scores(predictions, scenes)) > max(true_scores) - 1e-6
    )


@pytest.mark.parametrize("negative_of", ["toy", None], ids=["not-a-toy", "background"])
def test_one_negative_example_gives_ap_one(scenes, negative_of) -> None:
    segmenter = toy_segmenter("paper-neg")
    add_purple_negative(segmenter, negative_of)
    predictions = predict_all(segmenter, scenes)
    stats = average_precision(predictions, scenes, segmenter)
    assert stats["bbox"] == pytest.approx(1.0) and stats["segm"] == pytest.approx(1.0)
    assert purple_scores(predictions, scenes) == []
    for instances, scene in zip(predictions, scenes, strict=True):  # every toy still found
        assert len(instances.filter(0.5)) == len(toys_only(scene).masks)


def test_paper_neg_without_negatives_is_paper(paper_neg_predictions, paper_predictions) -> None:
    assert_same(paper_neg_predictions, paper_predictions)


@pytest.mark.parametrize("negative_of", ["toy", None], ids=["not-a-toy", "background"])
def test_paper_ignores_negatives(scenes, paper_predictions, negative_of) -> None:
    with_negative = toy_segmenter("paper")
    add_purple_negative(with_negative, negative_of)
    assert with_negative.memory.has_negatives
    assert_same(predict_all(with_negative, scenes), paper_predictions)


def test_a_negative_survives_the_memory_file(scenes, tmp_path) -> None:
    segmenter = toy_segmenter("paper-neg")
    add_purple_negative(segmenter, "toy")
    path = segmenter.memory.save(tmp_path / "memory.safetensors")
    fresh = Segmenter(
        SyntheticProposer(),
        SyntheticEncoder(lookalikes=True),
        preset="paper-neg",
        memory=MemoryBank.load(path),
    )
    assert_same(predict_all(fresh, scenes[:1]), predict_all(segmenter, scenes[:1]))
    assert purple_scores(predict_all(fresh, scenes[:1]), scenes[:1]) == []


def test_removing_the_negative_brings_the_lookalikes_back(scenes) -> None:
    segmenter = toy_segmenter("paper-neg")
    ref_id = add_purple_negative(segmenter, "toy")
    assert purple_scores(predict_all(segmenter, scenes[:1]), scenes[:1]) == []
    assert segmenter.memory.remove_reference(ref_id) == [ref_id]
    assert purple_scores(predict_all(segmenter, scenes[:1]), scenes[:1])
