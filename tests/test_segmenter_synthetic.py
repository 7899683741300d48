"""The whole method on synthetic scenes whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import SyntheticEncoder, SyntheticProposer, coco_ap, make_scene, scene_ground_truth

from refseg import EncoderMismatchError, Instances, InvalidInputError, MemoryBank, Segmenter
from refseg.models.base import EncoderIdentity

CLASSES = ["red", "green", "blue"]


@pytest.fixture
def segmenter() -> Segmenter:
    seg = Segmenter(SyntheticProposer(), SyntheticEncoder(), preset="paper")
    for seed in (100, 101):  # two shots per class, from other scenes
        reference = make_scene(seed, classes=tuple(CLASSES), per_class=1)
        for mask, class_name in zip(reference.masks, reference.classes, strict=True):
            seg.add_reference(reference.image, class_name, mask=mask, source={"scene": seed})
    return seg


def test_every_instance_found_with_its_class_and_ap_is_one(segmenter):
    scenes = [make_scene(seed, classes=tuple(CLASSES)) for seed in range(3)]
    results = []
    for image_id, scene in enumerate(scenes, start=1):
        instances = segmenter.predict(scene.image)
        assert isinstance(instances, Instances)
        assert instances.masks.shape[1:] == scene.image.shape[:2]
        confident = instances.filter(0.5)
        # one confident instance per object: duplicates and fragments merged away
        assert len(confident) == len(scene.masks)
        for mask, class_name in zip(scene.masks, scene.classes, strict=True):
            ious = [(m & mask).sum() / (m | mask).sum() for m in confident.masks]
            best = int(np.argmax(ious))
            assert ious[best] > 0.97
            assert confident.names[best] == class_name
        assert list(instances.scores) == sorted(instances.scores, reverse=True)
        results += instances.to_coco(image_id, segmenter.memory.category_ids)
    stats = coco_ap(scene_ground_truth(scenes, CLASSES), results)
    assert stats["bbox"] == pytest.approx(1.0)
    assert stats["segm"] == pytest.approx(1.0)


def test_duplicates_and_fragments_are_down_weighted(segmenter):
    scene = make_scene(7, classes=tuple(CLASSES))
    instances = segmenter.predict(scene.image)
    # the grown duplicate is removed by NMS, the half fragment by soft merging
    strong = instances.scores[instances.scores > 0.5]
    weak = instances.scores[instances.scores <= 0.5]
    assert len(strong) == len(scene.masks)
    assert len(weak) == 0 or weak.max() < 0.35


def test_the_point_grid_is_handed_to_the_proposer(segmenter):
    segmenter.predict(make_scene(3).image)
    points = segmenter.proposer.last_points
    assert points.shape == (32 * 32, 2)
    assert float(points[0, 0]) == pytest.approx(0.5)
    assert float(points[-1, 0]) == pytest.approx(1023.5)


def test_box_references_go_through_the_proposer():
    seg = Segmenter(SyntheticProposer(), SyntheticEncoder())
    reference = make_scene(11, classes=("red", "green"), per_class=1)
    for mask, class_name in zip(reference.masks, reference.classes, strict=True):
        ys, xs = np.nonzero(mask)
        box = (xs.min() - 2, ys.min() - 2, xs.max() + 3, ys.max() + 3)
        seg.add_reference(reference.image, class_name, box=box)
        sam_mask = seg.reference_mask(reference.image, box=box)
        assert (sam_mask & mask).sum() / (sam_mask | mask).sum() > 0.9
    assert seg.proposer.box_calls == 4
    assert seg.memory.references[0].source["prompt"] == "box"
    instances = seg.predict(make_scene(12, classes=("red", "green")).image).filter(0.5)
    assert sorted(instances.names) == ["green", "green", "red", "red"]


def test_unknown_class_is_not_invented(segmenter):
    # yellow objects are not in the memory: none is reported as a confident red/green/blue
    scene = make_scene(5, classes=("yellow",), per_class=3)
    assert len(segmenter.predict(scene.image).filter(0.5)) == 0


def test_empty_target_gives_empty_instances(segmenter):
    background = np.full((120, 90, 3), 128, dtype=np.uint8)
    segmenter.proposer.min_area = 10**9  # no object, and move distractors off: nothing survives
    instances = segmenter.predict(background)
    assert instances.masks.shape[1:] == (120, 90)
    assert instances.to_coco(1) == [] or all(r["score"] < 0.5 for r in instances.to_coco(1))


def test_no_surviving_proposal_is_empty_not_an_error(segmenter):
    segmenter.settings = segmenter.settings.replace(iou_threshold=0.99)
    instances = segmenter.predict(make_scene(1).image)
    assert len(instances) == 0 and instances.masks.shape == (0, 256, 256)


def test_non_square_images_and_input_types(segmenter, tmp_path):
    from PIL import Image

    scene = make_scene(21, classes=("red", "blue"), size=(200, 320), per_class=1)
    Image.fromarray(scene.image).save(tmp_path / "t.png")
    for image in (scene.image, Image.fromarray(scene.image), tmp_path / "t.png", str(tmp_path / "t.png")):
        instances = segmenter.predict(image).filter(0.5)
        assert instances.masks.shape[1:] == (200, 320)
        assert sorted(instances.names) == ["blue", "red"]
    boxes = instances.boxes
    assert (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 200).all()


def test_memory_round_trip_gives_same_predictions(segmenter, tmp_path):
    scene = make_scene(31, classes=tuple(CLASSES))
    before = segmenter.predict(scene.image)
    path = segmenter.memory.save(tmp_path / "mem.safetensors")
    fresh = Segmenter(SyntheticProposer(), SyntheticEncoder(), memory=MemoryBank.load(path))
    after = fresh.predict(scene.image)
    assert np.array_equal(before.masks, after.masks)
    assert np.allclose(before.scores, after.scores)
    assert list(before.labels) == list(after.labels)


def test_memory_from_another_encoder_is_refused(tmp_path):
    bank = MemoryBank(EncoderIdentity("another-encoder", "x", 518, 7))
    with pytest.raises(EncoderMismatchError, match="another-encoder"):
        Segmenter(SyntheticProposer(), SyntheticEncoder(), memory=bank)


def test_bad_inputs(segmenter):
    image = make_scene(1).image
    with pytest.raises(InvalidInputError):
        segmenter.add_reference(image, "red")  # neither mask nor box
    with pytest.raises(InvalidInputError, match="empty"):
        segmenter.add_reference(image, "red", mask=np.zeros(image.shape[:2], bool))
    with pytest.raises(InvalidInputError):
        segmenter.add_reference(image, "red", box=(500, 500, 600, 600))
    with pytest.raises(InvalidInputError):
        segmenter.add_reference(image, "red", mask=np.ones((3, 3), bool))
    with pytest.raises(InvalidInputError):
        Segmenter(SyntheticProposer(), SyntheticEncoder()).predict(image)  # empty memory
    with pytest.raises(InvalidInputError):
        Segmenter(SyntheticProposer(), SyntheticEncoder(), points_per_sid=3)


def test_settings_are_used(segmenter):
    segmenter.settings = segmenter.settings.replace(max_instances=2, points_per_side=4)
    instances = segmenter.predict(make_scene(2).image)
    assert len(instances) == 2
    assert segmenter.proposer.last_points.shape == (16, 2)


def test_the_synthetic_proposer_has_the_proposer_seam():
    import torch

    from refseg.models.base import Proposer

    proposer = SyntheticProposer()
    assert isinstance(proposer, Proposer)
    scene = make_scene(13, classes=("red",), per_class=1)
    seg = Segmenter(proposer, SyntheticEncoder())
    embedding = proposer.embed(seg._proposer_input(scene.image)[0])
    ys, xs = np.nonzero(scene.masks[0])
    scale = proposer.image_size / scene.image.shape[0]
    inside = torch.tensor([[xs.mean() * scale, ys.mean() * scale]])
    logits, iou = proposer.decode_prompts(embedding, inside)
    assert iou > 0.5 and (logits > 0).any()
    _, none = proposer.decode_prompts(embedding, inside, torch.tensor([0]))  # "not this": nothing left
    assert none == 0.0
