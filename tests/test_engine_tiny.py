"""End to end with the real transformers model code: tiny random-weight SAM2 and DINOv2 saved
with save_pretrained, loaded back through refseg's own loading path."""

from __future__ import annotations

import contextlib
import io
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from synthetic import make_scene, scene_ground_truth

from refseg import EncoderMismatchError, Instances, MemoryBank, Segmenter, WeightsUnavailableError

CLASSES = ["red", "green"]


@pytest.fixture(scope="module")
def segmenter(tiny_sam2_dir, tiny_dinov2_dir) -> Segmenter:
    return Segmenter.from_pretrained(
        "paper", sam2=tiny_sam2_dir, encoder=tiny_dinov2_dir, device="cpu", points_per_side=8
    )


def test_references_memory_reload_predict_coco(segmenter, tiny_sam2_dir, tiny_dinov2_dir, tmp_path):
    reference = make_scene(40, classes=tuple(CLASSES), per_class=1)
    for mask, name in zip(reference.masks, reference.classes, strict=True):
        segmenter.add_reference(reference.image, name, mask=mask, source={"scene": 40})
    ys, xs = np.nonzero(reference.masks[0])
    segmenter.add_reference(reference.image, "red", box=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    assert segmenter.memory.counts() == {"red": 2, "green": 1}
    path = segmenter.memory.save(tmp_path / "memory.safetensors")

    reloaded = Segmenter.from_pretrained(
        "paper", sam2=tiny_sam2_dir, encoder=tiny_dinov2_dir, device="cpu", memory=path, points_per_side=8
    )
    assert reloaded.memory.class_names == CLASSES
    scenes = [make_scene(seed, classes=tuple(CLASSES), size=(120, 160), per_class=1) for seed in (41, 42)]
    results = []
    for image_id, scene in enumerate(scenes, start=1):
        Image.fromarray(scene.image).save(tmp_path / f"{image_id}.png")
        instances = reloaded.predict(tmp_path / f"{image_id}.png")
        assert isinstance(instances, Instances)
        assert instances.masks.shape[1:] == (120, 160)
        assert len(instances) <= 100
        assert np.all(np.diff(instances.scores) <= 0)
        assert set(instances.labels.tolist()) <= {0, 1}
        results += instances.to_coco(image_id, reloaded.memory.category_ids)
        # the same weights give the same answer twice
        again = reloaded.predict(scene.image)
        assert np.array_equal(again.masks, instances.masks)
    assert results, "random weights still give some proposals on an 8x8 grid"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = scene_ground_truth(scenes, CLASSES)
        gt.createIndex()
        loaded = gt.loadRes(results)
    assert len(loaded.anns) == len(results)


def test_memory_checks_the_encoder_weights(segmenter, tiny_dinov2_dir, tiny_dinov2_registers_dir, tmp_path):
    bank = MemoryBank(segmenter.encoder.identity)
    # the same weights from another folder are the same encoder
    copy_dir = shutil.copytree(tiny_dinov2_dir, tmp_path / "elsewhere")
    from refseg.models.loading import load_encoder

    same = load_encoder(copy_dir, device="cpu")
    assert same.identity.fingerprint == segmenter.encoder.identity.fingerprint
    bank.check_encoder(same.identity)
    other = load_encoder(tiny_dinov2_registers_dir, device="cpu")
    with pytest.raises(EncoderMismatchError):
        bank.check_encoder(other.identity)


def test_missing_weights_are_one_clear_sentence(tmp_path):
    with pytest.raises(WeightsUnavailableError) as error:
        Segmenter.from_pretrained("fast", sam2=tmp_path / "nowhere", device="cpu")
    message = str(error.value)
    assert "SAM2" in message and "--sam2" in message and "\n" not in message
    with pytest.raises(WeightsUnavailableError) as error:
        Segmenter.from_pretrained("fast", sam2="refseg-tests/no-such-model", device="cpu")
    assert "no-such-model" in str(error.value)


def test_boxes_on_one_picture_run_the_image_encoder_once(segmenter):
    """Box references and previews on the same picture reuse its SAM2 embedding; another
    picture is embedded anew, and the masks are those of a fresh embedding."""
    fresh = Segmenter(segmenter.proposer, segmenter.encoder, preset=segmenter.settings)
    reference = make_scene(43, classes=tuple(CLASSES), per_class=1)
    other = make_scene(44, classes=tuple(CLASSES), per_class=1)
    boxes = []
    for mask in reference.masks:
        ys, xs = np.nonzero(mask)
        boxes.append((xs.min() - 2, ys.min() - 2, xs.max() + 3, ys.max() + 3))
    proposer = fresh.proposer
    calls: list[int] = []
    encoder = proposer.model.vision_encoder.backbone.patch_embed  # runs once per image encoding
    hook = encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        first = fresh.reference_mask(reference.image, box=boxes[0])
        fresh.add_reference(reference.image, "red", box=boxes[0])
        second = fresh.reference_mask(reference.image.copy(), box=boxes[1])
        fresh.add_reference(reference.image, "green", box=boxes[1])
        assert len(calls) == 1
        fresh.reference_mask(other.image, box=boxes[0])
        assert len(calls) == 2
        fresh.reference_mask(reference.image, box=boxes[1])  # only the last picture is kept
        assert len(calls) == 3
    finally:
        hook.remove()
    assert fresh.memory.counts() == {"red": 1, "green": 1}
    alone = Segmenter(segmenter.proposer, segmenter.encoder)  # nothing kept yet
    np.testing.assert_array_equal(alone.reference_mask(reference.image, box=boxes[1]), second)
    np.testing.assert_array_equal(alone.reference_mask(reference.image, box=boxes[0]), first)
