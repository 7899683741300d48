"""Box-only data sets: PASCAL VOC -> COCO conversion, and masks made from boxes by a proposer."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from cocodata import make_coco_dataset, make_voc_dataset

from refseg.data.boxes import boxes_to_input_space, boxes_to_masks, logits_to_masks
from refseg.data.coco import iter_images, load_coco
from refseg.data.voc import voc_image_dir, voc_to_coco
from refseg.errors import InvalidInputError
from refseg.evaluate import evaluate
from refseg.masks import box_to_mask, segmentation_to_mask
from refseg.preprocess import proposer_input

# ---------------------------------------------------------------- VOC -> COCO


def test_voc_boxes_become_coco_boxes(tmp_path: Path) -> None:
    root, truth = make_voc_dataset(tmp_path, n_images=3, classes=("dog", "cat", "sofa"))
    coco = voc_to_coco(root, "trainval")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert len(coco["categories"]) == 20 and names[18] == "sofa" and names[20] == "tvmonitor"
    assert [i["voc_id"] for i in coco["images"]] == list(truth)
    assert [i["id"] for i in coco["images"]] == [1, 2, 3]
    image_dir = voc_image_dir(root)
    assert image_dir == (tmp_path / "VOCdevkit").resolve()
    for image in coco["images"]:
        assert (image["width"], image["height"]) == (120, 90)
        assert image["file_name"] == f"VOC2007/JPEGImages/{image['voc_id']}.jpg"
        assert (image_dir / image["file_name"]).is_file()
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        expected = truth[image["voc_id"]]
        assert len(annotations) == len(expected)
        for annotation, obj in zip(annotations, expected, strict=True):
            x0, y0, x1, y1 = obj.box  # 0-based, exclusive end
            assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert annotation["area"] == (x1 - x0) * (y1 - y0)
            assert names[annotation["category_id"]] == obj.name
            assert annotation["difficult"] == obj.difficult and annotation["iscrowd"] == 0
            assert "segmentation" not in annotation
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    json.dumps(coco)


def test_voc_box_covers_the_drawn_pixels(tmp_path: Path) -> None:
    """The converted box, read back as a mask, covers exactly the rectangle painted in the image."""
    root, truth = make_voc_dataset(tmp_path, n_images=1)
    coco = voc_to_coco(root)
    obj = truth[coco["images"][0]["voc_id"]][0]
    mask = box_to_mask(coco["annotations"][0]["bbox"], 90, 120)
    x0, y0, x1, y1 = obj.box
    expected = np.zeros((90, 120), dtype=bool)
    expected[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(mask, expected)


def test_difficult_policies(tmp_path: Path) -> None:
    root, truth = make_voc_dataset(tmp_path, n_images=3)
    n_difficult = sum(o.difficult for objects in truth.values() for o in objects)
    n_all = sum(len(objects) for objects in truth.values())
    assert 0 < n_difficult < n_all
    kept = voc_to_coco(root)
    ignored = voc_to_coco(root, difficult="ignore")
    dropped = voc_to_coco(root, difficult="drop")
    assert len(kept["annotations"]) == len(ignored["annotations"]) == n_all
    assert sum(a["iscrowd"] for a in kept["annotations"]) == 0
    assert [a["iscrowd"] for a in ignored["annotations"]] == [a["difficult"] for a in ignored["annotations"]]
    assert len(dropped["annotations"]) == n_all - n_difficult and not any(
        a["difficult"] for a in dropped["annotations"]
    )
    with pytest.raises(InvalidInputError, match="difficult must be"):
        voc_to_coco(root, difficult="maybe")  # type: ignore[arg-type]


def test_ignored_difficult_objects_do_not_count_in_evaluation(tmp_path: Path) -> None:
    root, _ = make_voc_dataset(tmp_path, n_images=3)
    gt = voc_to_coco(root, difficult="ignore")
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not a["difficult"]
    ]
    assert evaluate(gt, results, iou_types=("bbox",))["bbox"]["AP"] == pytest.approx(100.0)
    assert evaluate(voc_to_coco(root), results, iou_types=("bbox",))["bbox"]["AP"] < 100.0


def test_two_roots_and_a_class_subset(tmp_path: Path) -> None:
    root07, truth07 = make_voc_dataset(tmp_path, n_images=2, year="VOC2007")
    root12, truth12 = make_voc_dataset(tmp_path, n_images=2, year="VOC2012", first_index=2008000, seed=1)
    coco = voc_to_coco([root07, root12], classes=("dog", "cat"))
    assert [i["id"] for i in coco["images"]] == [1, 2, 3, 4]
    assert [i["voc_root"] for i in coco["images"]] == ["VOC2007", "VOC2007", "VOC2012", "VOC2012"]
    assert coco["images"][2]["file_name"] == "VOC2012/JPEGImages/2008000.jpg"
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    expected = sum(
        o.name in ("dog", "cat") for t in (truth07, truth12) for objects in t.values() for o in objects
    )
    assert len(coco["annotations"]) == expected


def test_voc_input_errors(tmp_path: Path) -> None:
    root, truth = make_voc_dataset(tmp_path, n_images=1)
    with pytest.raises(InvalidInputError, match="Available sets: trainval"):
        voc_to_coco(root, "test")
    with pytest.raises(InvalidInputError, match="not a VOC root"):
        voc_to_coco(tmp_path)
    other = tmp_path / "elsewhere"
    root_b, _ = make_voc_dataset(other, n_images=1, year="VOC2012")
    with pytest.raises(InvalidInputError, match="different folders"):
        voc_to_coco([root, root_b])
    xml = root / "Annotations" / f"{next(iter(truth))}.xml"
    xml.write_text("<annotation><size>")
    with pytest.raises(InvalidInputError, match="Cannot parse"):
        voc_to_coco(root)
    xml.write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object></annotation>"
    )
    with pytest.raises(InvalidInputError, match="lacks xmin, ymin, xmax or ymax"):
        voc_to_coco(root)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("999999\n")
    with pytest.raises(InvalidInputError, match="Annotation file not found"):
        voc_to_coco(root)


def test_size_read_from_the_image_when_the_xml_lacks_it(tmp_path: Path) -> None:
    root, truth = make_voc_dataset(tmp_path, n_images=1)
    voc_id = next(iter(truth))
    xml = root / "Annotations" / f"{voc_id}.xml"
    xml.write_text(
        xml.read_text().replace("<size><width>120</width><height>90</height><depth>3</depth></size>", "")
    )
    image = voc_to_coco(root)["images"][0]
    assert (image["width"], image["height"]) == (120, 90)


# ---------------------------------------------------------------- boxes -> masks


class BoxFillProposer:
    """A fake proposer whose mask of a box is the box itself, on its 256 x 256 logit grid.

    Its embedding is the image; records every decode so the test can check the image and the
    boxes it was given."""

    image_size = 64

    def __init__(self, empty: bool = False) -> None:
        self.empty = empty
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return image.clone()

    def decode_boxes(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        self.calls.append((image.clone(), boxes.clone()))
        logits = torch.full((len(boxes), 256, 256), -4.0)
        if self.empty:
            return logits
        centres = (torch.arange(256, dtype=torch.float32) + 0.5) * self.image_size / 256
        for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            inside_x = (centres >= x0) & (centres < x1)
            inside_y = (centres >= y0) & (centres < y1)
            logits[k][inside_y[:, None] & inside_x[None, :]] = 4.0
        return logits


@pytest.fixture
def box_only(tmp_path: Path) -> tuple[dict, Path, dict]:
    """A generated COCO set with segmentations removed from all but the first annotation."""
    json_path, image_dir = make_coco_dataset(tmp_path, 3, ("cat", "dog"), crowd=False, small=False)
    original = load_coco(json_path)
    coco = copy.deepcopy(original)
    for annotation in coco["annotations"][1:]:
        del annotation["segmentation"]
    return coco, image_dir, original


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_boxes_to_masks_with_a_known_proposer(box_only: tuple[dict, Path, dict]) -> None:
    coco, image_dir, original = box_only
    proposer = BoxFillProposer()
    before = copy.deepcopy(coco)
    out = boxes_to_masks(coco, image_dir, proposer, progress=False)
    assert coco == before  # input untouched
    assert out["annotations"][0] == coco["annotations"][0]  # already had a mask: kept
    assert len(proposer.calls) == len(coco["images"])
    pixels = {info["id"]: image for info, image in iter_images(coco, image_dir)}
    for (image_tensor, boxes), info in zip(proposer.calls, coco["images"], strict=True):
        assert image_tensor.shape == (3, 64, 64) and 0.0 <= image_tensor.min() and image_tensor.max() <= 1.0
        torch.testing.assert_close(image_tensor, proposer_input(pixels[info["id"]], 64)[0])
        todo = [a for a in coco["annotations"][1:] if a["image_id"] == info["id"]]
        expected = [
            [x * 64 / 160, y * 64 / 120, (x + w) * 64 / 160, (y + h) * 64 / 120]
            for x, y, w, h in (a["bbox"] for a in todo)
        ]
        torch.testing.assert_close(boxes, torch.tensor(expected, dtype=torch.float32))
    for annotation in out["annotations"][1:]:
        assert annotation["mask_source"] == "sam2"
        mask = segmentation_to_mask(annotation["segmentation"], 120, 160)
        assert annotation["area"] == mask.sum()
        assert iou(mask, box_to_mask(annotation["bbox"], 120, 160)) > 0.93
        assert isinstance(annotation["segmentation"]["counts"], str)
    assert out["info"]["boxes_to_masks"]["masks"] == {"sam2": len(coco["annotations"]) - 1, "box": 0}
    json.dumps(out)
    # now every annotation has a mask, so segm evaluation works on it
    assert evaluate(out, [], iou_types=("segm",))["segm"]["AP"] == 0.0


def test_boxes_to_masks_overwrite_and_box_fallback(box_only: tuple[dict, Path, dict]) -> None:
    coco, image_dir, _ = box_only
    out = boxes_to_masks(coco, image_dir, BoxFillProposer(empty=True), overwrite=True, progress=False)
    assert all(a["mask_source"] == "box" for a in out["annotations"])
    for annotation in out["annotations"]:
        np.testing.assert_array_equal(
            segmentation_to_mask(annotation["segmentation"], 120, 160),
            box_to_mask(annotation["bbox"], 120, 160),
        )
    assert out["info"]["boxes_to_masks"]["masks"] == {"sam2": 0, "box": len(coco["annotations"])}


def test_boxes_to_masks_reports_and_skips_unreadable_images(
    box_only: tuple[dict, Path, dict], caplog: pytest.LogCaptureFixture
) -> None:
    coco, image_dir, _ = box_only
    broken = coco["images"][1]
    (image_dir / broken["file_name"]).write_bytes(b"garbage")
    proposer = BoxFillProposer()
    with caplog.at_level(logging.WARNING):
        out = boxes_to_masks(coco, image_dir, proposer, progress=False)
    assert len(proposer.calls) == len(coco["images"]) - 1
    skipped = out["info"]["boxes_to_masks"]["skipped_images"]
    assert [s["id"] for s in skipped] == [broken["id"]] and "Cannot read" in skipped[0]["error"]
    assert broken["file_name"] in caplog.text
    for annotation in out["annotations"][1:]:
        assert ("segmentation" in annotation) == (annotation["image_id"] != broken["id"])


def test_boxes_to_masks_checks_the_proposer_output(box_only: tuple[dict, Path, dict]) -> None:
    coco, image_dir, _ = box_only

    class Wrong(BoxFillProposer):
        def decode_boxes(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
            return torch.zeros((len(boxes) + 1, 256, 256))

    with pytest.raises(InvalidInputError, match="expected \\(K, h, w\\)"):
        boxes_to_masks(coco, image_dir, Wrong(), progress=False)


def test_geometry_helpers() -> None:
    boxes = boxes_to_input_space(np.array([[10, 20, 30, 40]]), height=100, width=200, size=1024)
    torch.testing.assert_close(boxes, torch.tensor([[51.2, 204.8, 204.8, 614.4]]))
    logits = torch.full((1, 256, 256), -1.0)
    logits[0, :, :128] = 1.0
    masks = logits_to_masks(logits, 30, 50)
    assert masks.shape == (1, 30, 50) and masks[0, :, :25].all() and not masks[0, :, 25:].any()
    assert logits_to_masks(torch.zeros((0, 256, 256)), 3, 4).shape == (0, 3, 4)
    image = np.full((30, 50, 3), 255, dtype=np.uint8)
    torch.testing.assert_close(proposer_input(image, 16)[0], torch.ones(3, 16, 16))


def test_boxes_to_masks_with_the_tiny_real_sam2(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The real SAM2 code path end to end (random weights: only shapes and bookkeeping are checked)."""
    try:
        proposer, _ = request.getfixturevalue("tiny_models")
    except pytest.FixtureLookupError:
        pytest.skip("tiny_models fixture not available")
    json_path, image_dir = make_coco_dataset(tmp_path, 1, ("cat",), crowd=False, small=False)
    coco = load_coco(json_path)
    for annotation in coco["annotations"]:
        del annotation["segmentation"]
    out = boxes_to_masks(coco, image_dir, proposer, progress=False)
    sources = [a["mask_source"] for a in out["annotations"]]
    assert len(sources) == len(coco["annotations"]) and set(sources) <= {"sam2", "box"}
    for annotation in out["annotations"]:
        mask = segmentation_to_mask(annotation["segmentation"], 120, 160)
        assert mask.any() and annotation["area"] == mask.sum()


# ----------------------------------------------------------------------------- unknown classes and splits


def test_voc2coco_refuses_a_misspelt_class_instead_of_an_empty_category(tmp_path):
    from click.testing import CliRunner

    from refseg.cli import cli

    voc_root, _ = make_voc_dataset(tmp_path, n_images=2)
    result = CliRunner().invoke(
        cli, ["voc2coco", str(voc_root), "--classes", "dgo,cat", "-o", str(tmp_path / "v.json")]
    )
    assert result.exit_code == 1
    assert "Unknown class 'dgo' (did you mean 'dog'?)" in result.stderr
    assert "Its objects are named: cat, dog, sofa" in result.stderr
    assert not (tmp_path / "v.json").exists()
    result = CliRunner().invoke(
        cli, ["voc2coco", str(voc_root), "--classes", "voc-splt-1", "-o", str(tmp_path / "v.json")]
    )
    assert (
        result.exit_code == 1 and "Did you mean the split voc-split-1? Split names: coco-all" in result.stderr
    )


def test_voc2coco_takes_coco_spellings_and_warns_about_absent_voc_classes(tmp_path, caplog):
    from click.testing import CliRunner

    from refseg.cli import cli

    voc_root, _ = make_voc_dataset(tmp_path, n_images=2)
    with caplog.at_level(logging.WARNING, logger="refseg"):
        converted = voc_to_coco(voc_root, classes=["dog", "aeroplane"])
    assert [c["name"] for c in converted["categories"]] == ["dog", "aeroplane"]
    assert "no object of aeroplane" in caplog.text
    out = tmp_path / "v.json"
    result = CliRunner().invoke(cli, ["voc2coco", str(voc_root), "--classes", "dog,couch", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [c["name"] for c in json.loads(out.read_text())["categories"]] == ["dog", "sofa"]


def test_an_unknown_split_name_lists_the_splits():
    from refseg.data.splits import resolve_classes

    with pytest.raises(
        InvalidInputError, match="Did you mean the split coco-fsod-novel\\? Split names: coco-all"
    ):
        resolve_classes("coco-fsod-novle", {"cat": 1})
