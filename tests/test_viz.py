"""Overlays, side-by-side pictures, the memory picture and ``refseg memory show``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_utils
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene

from refseg import Instances, MemoryBank, Segmenter
from refseg.cli.memory import show_memory_command
from refseg.errors import InvalidInputError
from refseg.masks import masks_to_boxes_exclusive as masks_to_boxes
from refseg.memory_pictures import picture_references
from refseg.models.base import EncoderIdentity
from refseg.viz import (
    PALETTE,
    class_color,
    draw_instances,
    draw_reference,
    draw_side_by_side,
    memory_picture,
    pca_rgb,
)

H, W = 120, 160


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 200, size=(H, W, 3), dtype=np.uint8)


def _instances(class_names: list[str], labels: list[int], scores: list[float]) -> Instances:
    masks = np.zeros((len(labels), H, W), dtype=bool)
    for i in range(len(labels)):
        masks[i, 20 + 40 * i : 50 + 40 * i, 30:80] = True
    return Instances(
        masks=masks,
        boxes=masks_to_boxes(masks),
        scores=np.array(scores, dtype=np.float32),
        labels=np.array(labels, dtype=np.int64),
        class_names=class_names,
    )


# --------------------------------------------------------------------------- colours


def test_class_colours_are_pinned_so_they_stay_the_same_across_runs() -> None:
    # crc32 of the utf-8 name, not Python's salted hash(): these values never change.
    assert class_color("cat") == (170, 110, 40)
    assert class_color("dog") == (145, 30, 180)
    assert class_color("person") == (128, 0, 0)
    assert all(class_color(name) in PALETTE for name in ["a", "ünïcødé", "potted plant", ""])


def test_colour_follows_the_class_name_not_the_label_index() -> None:
    image = _image()
    # The same object labelled "cat" through label 0 in one result and label 1 in another.
    first = draw_instances(image, _instances(["cat", "dog"], [0], [0.9]), alpha=1.0, show_labels=False)
    second = draw_instances(image, _instances(["dog", "cat"], [1], [0.9]), alpha=1.0, show_labels=False)
    inside = (55, 35)  # (x, y) well inside the mask, away from box and contour
    assert first.getpixel(inside) == second.getpixel(inside) == class_color("cat")
    assert class_color("cat") != class_color("dog")


# --------------------------------------------------------------------------- overlays


def test_overlay_has_the_image_size_and_paints_only_the_instances() -> None:
    image = _image()
    instances = _instances(["cat", "dog"], [0, 1], [0.9, 0.6])
    overlay = draw_instances(image, instances)
    assert overlay.size == (W, H) and overlay.mode == "RGB"
    pixels = np.asarray(overlay)
    assert not np.array_equal(pixels[30, 50], image[30, 50])  # inside the first mask
    assert not np.array_equal(pixels[70, 50], image[70, 50])  # inside the second mask
    assert np.array_equal(pixels[110:, 100:], image[110:, 100:])  # far from every instance


def test_score_threshold_hides_low_scores() -> None:
    image = _image()
    instances = _instances(["cat", "dog"], [0, 1], [0.9, 0.2])
    overlay = np.asarray(draw_instances(image, instances, score_threshold=0.5))
    assert not np.array_equal(overlay[30, 50], image[30, 50])
    assert np.array_equal(overlay[58:92, 28:82], image[58:92, 28:82])  # the 0.2 one is not drawn at all


def test_draw_on_empty_instances_returns_the_image_unchanged() -> None:
    image = _image()
    overlay = draw_instances(image, Instances.empty(H, W, ["cat"]))
    assert overlay.size == (W, H)
    assert np.array_equal(np.asarray(overlay), image)


def test_overlay_accepts_paths_and_rejects_a_different_image_size(tmp_path) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(_image()).save(path)
    assert draw_instances(path, _instances(["cat"], [0], [0.5])).size == (W, H)
    with pytest.raises(InvalidInputError, match="pass the image that was segmented"):
        draw_instances(np.zeros((H + 1, W, 3), dtype=np.uint8), _instances(["cat"], [0], [0.5]))


def test_labels_stay_inside_the_image_for_instances_at_the_border() -> None:
    masks = np.zeros((1, H, W), dtype=bool)
    masks[0, 0:10, W - 8 :] = True  # top-right corner: no room above or to the right
    instances = Instances(masks, masks_to_boxes(masks), np.array([0.5], np.float32), np.array([0]), ["x"])
    overlay = draw_instances(_image(), instances, alpha=0.0, show_boxes=False, font_size=12)
    assert overlay.size == (W, H)
    top_left = np.asarray(overlay)[:12, W - 40 :]
    assert (np.abs(top_left.astype(int) - np.array(class_color("x"))).sum(axis=2) == 0).any()


def test_side_by_side_puts_ground_truth_left_and_prediction_right() -> None:
    image = _image()
    truth = _instances(["cat"], [0], [1.0])
    predicted = _instances(["dog"], [0], [0.8])
    sheet = draw_side_by_side(image, predicted, truth, gap=10)
    assert sheet.width == 2 * W + 10
    strip = sheet.height - H
    assert strip > 0
    pixels = np.asarray(sheet)
    left = pixels[strip:, :W]
    right = pixels[strip:, W + 10 :]
    assert np.array_equal(left, np.asarray(draw_instances(image, truth, show_scores=False)))
    assert np.array_equal(right, np.asarray(draw_instances(image, predicted)))
    assert (pixels[strip:, W : W + 10] == 255).all()


# --------------------------------------------------------------------------- memory picture


def test_pca_rgb_is_deterministic_and_in_range() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 16, generator=generator)
    colours = pca_rgb(features)
    assert colours.shape == (200, 3)
    assert colours.min() >= 0 and colours.max() <= 255
    assert torch.equal(colours, pca_rgb(features.clone()))
    # The first component carries the most variance: stretch one direction and it becomes red.
    stretched = features.clone()
    stretched[:, 5] *= 20
    red = pca_rgb(stretched)[:, 0]
    assert torch.corrcoef(torch.stack([red, stretched[:, 5]]))[0, 1].abs() > 0.99
    assert pca_rgb(torch.randn(10, 2)).shape == (10, 3)  # fewer channels than components


def test_pca_rgb_sets_the_colour_range_on_a_sample_of_many_patches(monkeypatch) -> None:
    # torch.quantile refuses more than 2**24 values per column; pca_rgb samples evenly beyond a limit.
    import refseg.viz as viz

    features = torch.randn(20_000, 8, generator=torch.Generator().manual_seed(1))
    full = pca_rgb(features)
    monkeypatch.setattr(viz, "QUANTILE_SAMPLE", 2_000)
    sampled = pca_rgb(features)
    assert sampled.shape == full.shape
    assert (sampled - full).abs().mean() < 5.0  # same picture, colour range from 2,000 patches


def _scene_references(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, str]]:
    scene = make_scene(seed, classes=("red", "green", "blue"), size=(160, 160), per_class=2, radius=(12, 18))
    return [(scene.image, mask, name) for mask, name in zip(scene.masks, scene.classes, strict=True)]


def test_memory_picture_layout_has_one_row_per_class() -> None:
    references = _scene_references()[:5]  # red, red, green, green, blue
    tile, label, gap = 48, 100, 4
    picture = memory_picture(
        SyntheticEncoder(input_size=112), references, tile_size=tile, label_width=label, gap=gap
    )
    assert picture.size == (label + gap + 2 * (2 * tile + gap), gap + 3 * (tile + gap))
    pixels = np.asarray(picture)
    # The third row (blue) has one reference: its second slot stays white.
    third_row = pixels[gap + 2 * (tile + gap) : gap + 2 * (tile + gap) + tile]
    second_slot = label + gap + 2 * tile + gap
    assert (third_row[:, second_slot:] == 255).all()
    assert not (third_row[:, label + gap : second_slot - gap] == 255).all()


def test_memory_picture_colours_classes_apart_and_dims_the_background() -> None:
    references = [r for r in _scene_references() if r[2] in ("red", "blue")]
    tile, label, gap = 56, 60, 4
    picture = np.asarray(
        memory_picture(
            SyntheticEncoder(input_size=112), references, tile_size=tile, label_width=label, gap=gap
        )
    ).astype(float)

    def pca_tile(row: int, column: int) -> np.ndarray:
        top = gap + row * (tile + gap)
        left = label + gap + column * (2 * tile + gap) + tile
        return picture[top : top + tile, left : left + tile]

    centre = slice(tile // 2 - 4, tile // 2 + 4)
    red_a, red_b, blue = (
        pca_tile(r, c)[centre, centre].mean(axis=(0, 1)) for r, c in ((0, 0), (0, 1), (1, 0))
    )
    assert np.abs(red_a - red_b).sum() < np.abs(red_a - blue).sum()  # same class, alike colours
    # A corner patch is background (mask weight 0): dimmed to 0.3 of its colour.
    assert pca_tile(0, 0)[:4, :4].max() <= 0.3 * 255 + 1


def test_memory_picture_rejects_no_references() -> None:
    with pytest.raises(InvalidInputError, match="at least one"):
        memory_picture(SyntheticEncoder(input_size=112), [])


def test_memory_picture_with_a_tiny_dinov2(tiny_dinov2_dir) -> None:
    from refseg.models.loading import load_encoder

    encoder = load_encoder(tiny_dinov2_dir, device="cpu")
    references = _scene_references()[:3]
    picture = memory_picture(encoder, references, tile_size=40, label_width=80, gap=2)
    assert picture.size == (80 + 2 + 2 * (2 * 40 + 2), 2 + 2 * (40 + 2))


def test_draw_reference_shows_the_context_crop_with_the_mask_outlined() -> None:
    image = np.full((100, 100, 3), 90, dtype=np.uint8)
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:60, 40:60] = True
    tile = np.asarray(draw_reference(image, mask, class_name="cat", size=60))
    assert tile.shape == (60, 60, 3)
    outlined = (tile == np.array(class_color("cat"))).all(axis=2)
    # The crop is 1.2 x the 20 px box: the outline sits about 60 * 0.1 / 1.2 = 5 px in from the border.
    assert outlined[:, 2:9].any() and not outlined[:, :2].any() and not outlined[30, 12:48].any()


# --------------------------------------------------------------------------- refseg memory show


@pytest.fixture
def tiny_bank(tmp_path, tiny_dinov2_dir):
    """A memory (tiny DINOv2) whose references were recorded in the three ways refseg records them."""
    from refseg.models.loading import load_encoder

    scene = make_scene(3, classes=("red", "blue"), size=(160, 160), per_class=2, radius=(12, 18))
    image_path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(image_path)
    segmenter = Segmenter(SyntheticProposer(), load_encoder(tiny_dinov2_dir, device="cpu"), preset="fast")
    rle = mask_utils.encode(np.asfortranarray(scene.masks[0].astype(np.uint8)))
    rle = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    segmenter.add_reference(
        scene.image, "red", mask=scene.masks[0], source={"file": str(image_path), "mask": rle}
    )
    mask_file = tmp_path / "red.mask.png"
    Image.fromarray(scene.masks[1].astype(np.uint8) * 255).save(mask_file)
    segmenter.add_reference(
        scene.image, "red", mask=scene.masks[1], source={"file": "scene.png", "mask_file": str(mask_file)}
    )
    segmenter.add_reference(
        scene.image, "blue", mask=scene.masks[2], source={"image_id": 7, "annotation_id": 70}
    )
    segmenter.add_reference(scene.image, "blue", mask=scene.masks[3], source={"file": "missing.png"})
    coco = {
        "images": [{"id": 7, "file_name": "scene.png", "height": 160, "width": 160}],
        "annotations": [{"id": 70, "image_id": 7, "category_id": 2, "segmentation": rle_of(scene.masks[2])}],
        "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}],
    }
    coco_path = tmp_path / "refs.json"
    coco_path.write_text(json.dumps(coco))
    memory_path = segmenter.memory.save(tmp_path / "memory.safetensors")
    return memory_path, coco_path, scene


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def test_picture_references_finds_images_and_masks_from_the_recorded_sources(tiny_bank, tmp_path) -> None:
    memory_path, coco_path, scene = tiny_bank
    bank = MemoryBank.load(memory_path)
    found, skipped = picture_references(bank, images_dir=tmp_path, coco=json.loads(coco_path.read_text()))
    assert [r.class_name for r in found] == ["red", "red", "blue"]
    for reference, expected in zip(found, scene.masks[:3], strict=True):
        assert np.array_equal(reference.mask, expected)
    assert len(skipped) == 1 and "missing.png" in skipped[0]
    # Without the COCO json the annotation-id reference cannot be found again.
    found, skipped = picture_references(bank, images_dir=tmp_path)
    assert len(found) == 2 and len(skipped) == 2
    # A box-only source is made into a mask by the given function.
    bank.references[0].source.clear()
    bank.references[0].source.update({"file": "scene.png", "box": [0, 0, 20, 20]})
    calls = []

    def box_to_mask(image, box):
        calls.append(list(box))
        return scene.masks[0]

    found, _ = picture_references(bank, images_dir=tmp_path, prompt_to_mask=box_to_mask, max_per_class=1)
    assert calls == [[0, 0, 20, 20]] and [r.class_name for r in found] == ["red"]


def test_memory_show_command_writes_the_picture(tiny_bank, tiny_dinov2_dir, tmp_path) -> None:
    memory_path, coco_path, _ = tiny_bank
    out = tmp_path / "pictures" / "memory.png"
    result = CliRunner().invoke(
        show_memory_command,
        [
            str(memory_path),
            "-o",
            str(out),
            "--images",
            str(tmp_path),
            "--coco",
            str(coco_path),
            "--encoder",
            str(tiny_dinov2_dir),
            "--device",
            "cpu",
            "--tile-size",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "skipped reference 3 (blue)" in result.output and str(out) in result.output
    picture = Image.open(out)
    assert picture.size == (140 + 6 + 2 * (2 * 32 + 6), 6 + 2 * (32 + 6))
    # One class only, one reference of it: one row, one pair of tiles.
    common = ["--images", str(tmp_path), "--encoder", str(tiny_dinov2_dir), "--tile-size", "32"]
    result = CliRunner().invoke(
        show_memory_command,
        [str(memory_path), "-o", str(out), "--classes", "red", "--max-per-class", "1", *common],
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (140 + 6 + 1 * (2 * 32 + 6), 6 + 1 * (32 + 6))
    result = CliRunner().invoke(show_memory_command, [str(memory_path), "--classes", "red,dog", *common])
    assert result.exit_code != 0 and "Unknown class(es) ['dog']" in result.output


def test_memory_show_command_explains_what_is_missing(tiny_bank, tiny_dinov2_dir, tmp_path) -> None:
    memory_path, _, _ = tiny_bank
    bank = MemoryBank.load(memory_path)
    for record in bank.references:
        record.source.clear()
    bank.save(memory_path)
    result = CliRunner().invoke(show_memory_command, [str(memory_path), "--encoder", str(tiny_dinov2_dir)])
    assert result.exit_code != 0
    assert "could be found" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(show_memory_command, [str(tmp_path / "nope.safetensors")])
    assert result.exit_code != 0 and "Memory file not found" in result.output


def test_memory_show_refuses_an_encoder_other_than_the_banks(tmp_path, tiny_dinov2_dir) -> None:
    bank = MemoryBank(EncoderIdentity("another-encoder", "1", 518, 32))
    bank.add(torch.ones(32), "cat", {"file": "x.png"})
    path = bank.save(tmp_path / "memory.safetensors")
    result = CliRunner().invoke(show_memory_command, [str(path), "--encoder", str(tiny_dinov2_dir)])
    assert result.exit_code != 0 and "encoder" in result.output and "Traceback" not in result.output


def _show_memory_32(memory_path, images, encoder_dir):
    """``refseg memory show`` with 32-px tiles, pictures looked up in ``images``; the picture's path."""
    out = images / "memory.png"
    arguments = [str(memory_path), "-o", str(out), "--images", str(images), "--encoder", str(encoder_dir)]
    result = CliRunner().invoke(show_memory_command, [*arguments, "--tile-size", "32"])
    assert result.exit_code == 0, result.output
    return out


def test_memory_show_crops_with_the_banks_context_ratio(tmp_path, tiny_dinov2_dir) -> None:
    from refseg.models.loading import load_encoder

    encoder = load_encoder(tiny_dinov2_dir, device="cpu")
    scene = make_scene(5, classes=("red",), size=(160, 160), per_class=1, radius=(12, 18))
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    segmenter = Segmenter(SyntheticProposer(), encoder, preset="fast", context_ratio=0.6)
    segmenter.add_reference(
        scene.image, "red", mask=scene.masks[0], source={"file": "scene.png", "mask": rle_of(scene.masks[0])}
    )
    memory_path = segmenter.memory.save(tmp_path / "memory.safetensors")
    out = _show_memory_32(memory_path, tmp_path, tiny_dinov2_dir)
    references = [(scene.image, scene.masks[0], "red")]
    wide = memory_picture(encoder, references, context_ratio=0.6, tile_size=32)
    default = memory_picture(encoder, references, tile_size=32)
    shown = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(shown, np.asarray(wide)) and not np.array_equal(shown, np.asarray(default))


def test_memory_show_crops_as_the_bank_did_under_the_research_convention(tmp_path, tiny_dinov2_dir) -> None:
    """A paper bank centres each crop on the annotated box (docs/method.md 7.3): the picture
    shows that crop, not refseg's crop around the mask."""
    from refseg.models.loading import load_encoder

    encoder = load_encoder(tiny_dinov2_dir, device="cpu")
    scene = make_scene(5, classes=("red",), size=(160, 160), per_class=1, radius=(12, 18))
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    mask = scene.masks[0]
    x1, y1, x2, y2 = (float(v) for v in masks_to_boxes(torch.from_numpy(mask)[None])[0])
    box = [x1 - 9.7, y1 - 6.2, x2 + 3.0, y2 + 11.5]  # an annotated box looser than the mask
    segmenter = Segmenter(SyntheticProposer(), encoder, preset="paper")
    segmenter.add_reference(
        scene.image, "red", mask=mask, box=box, source={"file": "scene.png", "mask": rle_of(mask)}
    )
    assert segmenter.memory.reference_crop == "research"
    memory_path = segmenter.memory.save(tmp_path / "memory.safetensors")
    out = _show_memory_32(memory_path, tmp_path, tiny_dinov2_dir)
    research = memory_picture(
        encoder, [(scene.image, mask, "red", False, box)], tile_size=32, reference_crop="research"
    )
    refseg_crop = memory_picture(encoder, [(scene.image, mask, "red")], tile_size=32)
    shown = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(shown, np.asarray(research)) and not np.array_equal(shown, np.asarray(refseg_crop))
