"""The research code's conventions in ``paper`` (docs/fidelity.md, D1-D17), one test each, and
refseg's own in the other presets. Each test fails if its convention is changed back."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene

from refseg import InvalidInputError, MemoryBank, Segmenter, dedup, matching
from refseg.instances import Instances
from refseg.models.sam2 import Sam2Proposer
from refseg.preprocess import encoder_input, proposer_input
from refseg.presets import FAST, PAPER, PAPER_NEG, get_preset
from refseg.reference_features import context_crop_box, crop_centre_box, reference_feature, reference_inputs
from refseg.runner import box_convention_of


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """(120, 170, 3) uint8 with sharp edges (bicubic overshoots on them)."""
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 2, size=(6, 9, 3)).astype(np.uint8) * 255
    return np.kron(blocks, np.ones((20, 20, 1), dtype=np.uint8))[:120, :170]


def segmenter(preset: str = "paper", **overrides: object) -> Segmenter:
    return Segmenter(SyntheticProposer(), SyntheticEncoder(), preset=preset, **overrides)


def test_presets_name_the_conventions() -> None:
    assert (PAPER.proposer_resize, PAPER.encoder_antialias, PAPER.reference_crop) == (
        "pil",
        False,
        "research",
    )
    assert (PAPER.no_memory_embedding, PAPER.grid_order, PAPER.box_convention) == (
        False,
        "x-slowest",
        "inclusive",
    )
    assert (FAST.proposer_resize, FAST.encoder_antialias, FAST.reference_crop) == ("torch", True, "refseg")
    assert (FAST.no_memory_embedding, FAST.grid_order, FAST.box_convention) == (
        True,
        "x-fastest",
        "exclusive",
    )
    assert PAPER_NEG.replace(negatives=False, name="paper") == PAPER  # paper plus negatives, nothing else
    with pytest.raises(InvalidInputError, match="proposer_resize"):
        PAPER.replace(proposer_resize="bilinear")
    with pytest.raises(InvalidInputError, match="encoder_antialias"):
        PAPER.replace(encoder_antialias="yes")


# ---------------------------------------------------------------------------- D1: the SAM2 input


def test_d1_paper_resizes_the_sam2_input_with_pillow_on_uint8(picture) -> None:
    expected = np.asarray(Image.fromarray(picture).resize((64, 64), Image.BICUBIC)) / 255.0
    got = proposer_input(picture, 64, "pil")
    assert got.dtype == torch.float32 and got.shape == (1, 3, 64, 64)
    assert torch.equal(got[0].permute(1, 2, 0), torch.from_numpy(expected).float())
    assert not torch.allclose(got, proposer_input(picture, 64, "torch"), atol=1e-3)
    assert torch.equal(segmenter()._proposer_input(picture), proposer_input(picture, 1024, "pil"))
    assert torch.equal(segmenter("fast")._proposer_input(picture), proposer_input(picture, 1024, "torch"))


# ---------------------------------------------------------------------------- D2: the DINOv2 input


def test_d2_paper_shrinks_the_dinov2_input_plain_bicubic_unclamped(picture) -> None:
    square = proposer_input(picture, 1024, "pil")
    plain = F.interpolate(square, size=(518, 518), mode="bicubic", align_corners=False)
    assert plain.min() < 0 or plain.max() > 1  # bicubic overshoot at the sharp edges
    assert torch.equal(encoder_input(square, 518, antialias=False), plain)
    assert torch.equal(segmenter()._encoder_input(square), plain)
    smooth = F.interpolate(square, size=(518, 518), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(segmenter("fast")._encoder_input(square), smooth.clamp(0, 1))


# ---------------------------------------------------------------------------- D3 + D4: the reference crop


def test_d3_the_research_crop_truncates_and_centres_on_the_annotated_box() -> None:
    mask = np.zeros((100, 200), dtype=bool)
    mask[21:62, 11:51] = True  # tight box (11, 21, 51, 62)
    annotated = (10.6, 20.2, 50.9, 61.7)
    assert crop_centre_box(mask, annotated, "research") == (10.0, 20.0, 50.0, 61.0)
    assert crop_centre_box(mask, annotated, "refseg") == (11.0, 21.0, 51.0, 62.0)
    assert crop_centre_box(mask, None, "research") == (11.0, 21.0, 51.0, 62.0)
    # centre (30, 40.5), side 1.2 * 41 = 49.2: int() truncates, floor / ceil enclose
    assert context_crop_box((10, 20, 50, 61), (100, 200), 0.2, "research") == (5, 15, 54, 65)
    assert context_crop_box((10, 20, 50, 61), (100, 200), 0.2, "refseg") == (5, 15, 55, 66)


def test_d4_the_research_crop_is_not_clamped_after_the_bicubic_resize(picture) -> None:
    mask = np.zeros(picture.shape[:2], dtype=bool)
    mask[30:90, 40:130] = True
    research, _ = reference_inputs(picture, mask, 98, convention="research")
    refseg, _ = reference_inputs(picture, mask, 98, convention="refseg")
    assert research.min() < 0 or research.max() > 1
    assert torch.equal(refseg, research.clamp(0, 1))


def test_paper_add_reference_crops_around_the_given_annotated_box(picture) -> None:
    mask = np.zeros(picture.shape[:2], dtype=bool)
    mask[30:90, 40:130] = True
    box = (33.9, 25.5, 120.2, 88.8)
    seg = segmenter()
    seg.add_reference(picture, "thing", mask=mask, box=box)
    expected = reference_feature(seg.encoder, picture, mask, 0.2, box=box, convention="research")
    assert torch.equal(seg.memory.reference_features[0], expected)
    assert seg.memory.references[0].source == {"prompt": "mask", "annotated_box": list(box)}
    assert seg.memory.reference_crop == "research"
    fast = segmenter("fast")
    fast.add_reference(picture, "thing", mask=mask, box=box)  # refseg's crop: the mask's tight box
    assert torch.equal(fast.memory.reference_features[0], reference_feature(fast.encoder, picture, mask, 0.2))
    with pytest.raises(InvalidInputError, match="not both"):
        seg.add_reference(picture, "thing", mask=mask, points=[(50, 50)])


def test_the_coco_reference_builder_hands_the_annotated_box_over(tmp_path) -> None:
    from refseg.references import add_coco_references

    scene = make_scene(1, size=(96, 128), per_class=1, classes=("red",))
    Image.fromarray(scene.image).save(tmp_path / "a.png")
    ys, xs = np.nonzero(scene.masks[0])
    bbox = [
        float(xs.min()) + 0.7,
        float(ys.min()) + 0.3,
        float(xs.max() - xs.min()),
        float(ys.max() - ys.min()),
    ]
    from refseg.masks import mask_to_rle

    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 96, "width": 128}],
        "categories": [{"id": 1, "name": "red"}],
        "annotations": [
            {
                "id": 5,
                "image_id": 1,
                "category_id": 1,
                "segmentation": mask_to_rle(scene.masks[0]),
                "bbox": bbox,
            }
        ],
    }
    seg = segmenter()
    add_coco_references(seg, coco, tmp_path, progress=False)
    x, y, w, h = bbox
    assert seg.memory.references[0].source["annotated_box"] == [x, y, x + w, y + h]
    expected = reference_feature(
        seg.encoder, scene.image, scene.masks[0], 0.2, box=(x, y, x + w, y + h), convention="research"
    )
    assert torch.equal(seg.memory.reference_features[0], expected)


# ---------------------------------------------------------------------------- the memory records its crop


def test_a_memory_records_its_crop_convention_and_refuses_a_mix(tmp_path, picture) -> None:
    mask = np.zeros(picture.shape[:2], dtype=bool)
    mask[30:90, 40:130] = True
    seg = segmenter()
    seg.add_reference(picture, "thing", mask=mask)
    loaded = MemoryBank.load(seg.memory.save(tmp_path / "m.safetensors"))
    assert loaded.reference_crop == "research" and not loaded.reference_crop_assumed
    assert "reference crop: research" in loaded.describe()
    fast = segmenter("fast")
    fast.memory = loaded
    with pytest.raises(InvalidInputError, match="'research' convention.*--reference-crop research"):
        fast.add_reference(picture, "thing", mask=mask)
    assert len(fast.memory) == 1
    again = segmenter("fast", reference_crop="research")
    again.memory = loaded
    again.add_reference(picture, "thing", mask=mask)
    assert len(again.memory) == 2


def test_a_memory_cropped_otherwise_than_the_preset_is_used_with_a_warning(tmp_path, picture, caplog) -> None:
    mask = np.zeros(picture.shape[:2], dtype=bool)
    mask[30:90, 40:130] = True
    seg = segmenter()
    seg.add_reference(picture, "thing", mask=mask)
    caplog.set_level(logging.WARNING, logger="refseg.segmenter")
    segmenter("paper").memory = seg.memory
    assert not caplog.records
    fast = segmenter("fast")
    fast.memory = seg.memory
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "cropped the 'research' way, preset fast crops the 'refseg' way" in caplog.text
    assert "--reference-crop refseg" in caplog.text
    fast.predict(picture)  # the memory is used as it is
    assert fast.memory is seg.memory


def test_a_0_1_0_memory_is_assumed_cropped_the_refseg_way(tmp_path, picture) -> None:
    from pathlib import Path

    bank = MemoryBank.load(Path(__file__).parent / "data" / "memory-0.1.0" / "memory.safetensors")
    assert bank.reference_crop == "refseg" and bank.reference_crop_assumed
    again = MemoryBank.load(bank.save(tmp_path / "again.safetensors"))
    assert again.reference_crop == "refseg" and again.reference_crop_assumed  # still not recorded as known


def test_reproduce_builds_again_a_memory_cropped_otherwise(tmp_path, picture) -> None:
    from refseg.pipelines.reproduce import _same_memory

    class Collect:
        def warn(self, text: str) -> None:
            self.text = text

    mask = np.zeros(picture.shape[:2], dtype=bool)
    mask[30:90, 40:130] = True
    seg = segmenter("fast")
    seg.add_reference(picture, "thing", mask=mask)
    path = seg.memory.save(tmp_path / "m.safetensors")
    assert _same_memory(path, 0.2, Collect(), "refseg")
    reporter = Collect()
    assert not _same_memory(path, 0.2, reporter, "research") and "reference crop" in reporter.text


# ---------------------------------------------------------------------------- D6: the no-memory embedding


@pytest.mark.parametrize("encoder", ["lean", "stock"])
def test_d6_the_embedding_without_the_no_memory_embedding(tiny_models, tiny_image, encoder) -> None:
    proposer, _ = tiny_models
    proposer = Sam2Proposer(proposer.model, device="cpu", encoder=encoder)
    model = proposer.model
    with torch.no_grad():
        saved = model.no_memory_embedding.clone()
        model.no_memory_embedding.normal_(0, 0.5)  # the tiny init is ~0: make the test mean something
        no_memory = model.no_memory_embedding.clone()
    try:
        added = proposer.embed(tiny_image)
        plain = proposer.embed(tiny_image, no_memory_embedding=False)
        stock = Sam2Proposer(model, device="cpu", encoder="stock").embed(
            tiny_image, no_memory_embedding=False
        )
    finally:
        with torch.no_grad():
            model.no_memory_embedding.copy_(saved)
    offset = added.image_embeddings - plain.image_embeddings
    torch.testing.assert_close(offset.mean(dim=(2, 3)), no_memory.reshape(1, -1), atol=1e-5, rtol=0)
    assert float(offset.abs().max()) > 0.1
    torch.testing.assert_close(plain.image_embeddings, stock.image_embeddings, atol=1e-5, rtol=1e-4)
    assert torch.equal(plain.feat_s0, added.feat_s0)


def test_d6_paper_decodes_its_grid_without_the_no_memory_embedding() -> None:
    calls = []

    class Recording(SyntheticProposer):
        def embed(self, image, **options):
            calls.append(options)
            return super().embed(image, **options)

    scene = make_scene(2, size=(128, 128), per_class=1)
    for preset, expected in (("paper", {"no_memory_embedding": False}), ("fast", {})):
        calls.clear()
        Segmenter(Recording(), SyntheticEncoder(), preset=preset).propose(scene.image)
        assert calls == [expected]


# ---------------------------------------------------------------------------- D7: the grid order


def test_d7_paper_decodes_the_grid_x_slowest() -> None:
    grid = matching.point_grid(3, 7, "x-slowest")
    assert grid.tolist() == [[0.5, 0.5], [0.5, 3.5], [0.5, 6.5], [3.5, 0.5], [3.5, 3.5], [3.5, 6.5],
                             [6.5, 0.5], [6.5, 3.5], [6.5, 6.5]]  # fmt: skip
    assert matching.point_grid(3, 7).tolist()[:3] == [[0.5, 0.5], [3.5, 0.5], [6.5, 0.5]]
    scene = make_scene(2, size=(128, 128), per_class=1)
    for preset, order in (("paper", "x-slowest"), ("fast", "x-fastest")):
        seg = segmenter(preset)
        seg.propose(scene.image)
        expected = matching.point_grid(seg.settings.points_per_side, 1024, order)
        assert torch.equal(seg.proposer.last_points, expected)


# ---------------------------------------------------------------------------- D14: full-size masks


def test_d14_masks_shrink_to_small_images_with_antialiasing() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = F.interpolate(
        torch.randn((4, 1, 16, 16), generator=generator), size=(256, 256), mode="bilinear"
    )[:, 0]
    small = (110, 150)
    expected = (
        F.interpolate(logits[:, None], size=small, mode="bilinear", align_corners=False, antialias=True)[:, 0]
        > 0
    )
    plain = F.interpolate(logits[:, None], size=small, mode="bilinear", align_corners=False)[:, 0] > 0
    assert not torch.equal(expected, plain)
    assert torch.equal(dedup.upsample_masks(logits, small), expected)
    assert torch.equal(dedup.upsample_masks_cropped(logits, small).to_dense(), expected)
    large = (300, 400)  # enlarging: antialiasing changes nothing
    enlarged = F.interpolate(logits[:, None], size=large, mode="bilinear", align_corners=False)[:, 0] > 0
    assert torch.equal(dedup.upsample_masks(logits, large), enlarged)


# ---------------------------------------------------------------------------- D17: output boxes


def test_d17_paper_writes_inclusive_boxes_in_its_coco_results() -> None:
    masks = np.zeros((1, 10, 12), dtype=bool)
    masks[0, 2:5, 3:4] = True  # one column wide, three rows high
    instances = Instances(
        masks, np.array([[3, 2, 4, 5]], np.float32), np.array([0.9], np.float32), np.array([0]), ["a"]
    )
    assert instances.to_coco(1)[0]["bbox"] == [3.0, 2.0, 1.0, 3.0]
    assert instances.to_coco(1, box_convention="inclusive")[0]["bbox"] == [3.0, 2.0, 0.0, 2.0]
    assert box_convention_of(segmenter("paper")) == "inclusive"
    assert box_convention_of(segmenter("fast")) == "exclusive"
    assert box_convention_of(object()) == "exclusive"
    assert get_preset("paper").box_convention == "inclusive"
