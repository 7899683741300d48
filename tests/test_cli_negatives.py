"""Negative examples through the command line: ``memory --folder`` (CLASS/negatives/ and
_background/), ``memory --refs`` ("negative": true), ``predict --references``, ``memory info``
and ``memory show``, on tiny random-weight models loaded from disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from cocodata import make_coco_dataset
from PIL import Image
from synthetic import make_scene

from refseg import matching
from refseg.cli import cli
from refseg.memory import MemoryBank
from refseg.memory_file import read_memory_metadata
from refseg.viz import NEGATIVE_COLOR


def ok(*args: object) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def models(tiny_sam2_dir: Path, tiny_dinov2_dir: Path) -> list[str]:
    return ["--sam2", str(tiny_sam2_dir), "--encoder", str(tiny_dinov2_dir), "--device", "cpu"]


def save_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{stem}.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{stem}.mask.png")


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cat (1 positive, 1 negative), dog (1 positive), _background (1), bird (a negative only)."""
    root = tmp_path_factory.mktemp("refs")
    scene = make_scene(
        3, classes=("red", "green", "blue", "yellow"), size=(96, 96), per_class=1, radius=(10, 14)
    )
    red, green, blue, yellow = scene.masks
    save_pair(root / "cat", "tabby", scene.image, red)
    save_pair(root / "cat" / "negatives", "fox", scene.image, green)
    save_pair(root / "dog", "rex", scene.image, blue)
    save_pair(root / "_background", "wall", scene.image, yellow)
    save_pair(root / "bird" / "negatives", "kite", scene.image, green)  # no positive bird: skipped
    return root


def test_memory_folder_keeps_negatives_and_background_and_info_counts_them(
    reference_folder: Path, tmp_path: Path, models
) -> None:
    memory = tmp_path / "memory.safetensors"
    built = ok("memory", "--folder", reference_folder, "-o", memory, *models)
    assert "bird" in built.stderr and "no positive reference of 'bird'" in built.stderr
    bank = MemoryBank.load(memory)
    assert bank.class_names == ["cat", "dog"] and bank.category_ids == {"cat": 1, "dog": 2}
    assert bank.counts() == {"cat": 1, "dog": 1}
    assert bank.negative_counts() == {"cat": 1, "dog": 0, None: 1}
    negative = next(r for r in bank.references if r.negative and r.class_name == "cat")
    assert negative.source["mask_file"].endswith("fox.mask.png")
    assert read_memory_metadata(memory)["format_version"] == "2"
    info = ok("memory", "info", memory).output
    assert "format: refseg.memory v2" in info
    assert "classes: 2, references: 2 positive, 2 negative" in info
    cat_line = next(line for line in info.splitlines() if line.strip().startswith("cat"))
    assert cat_line.split()[-4:] == ["1", "positive", "1", "negative"]
    assert "background negatives (no class): 1" in info


def test_memory_show_marks_negatives(reference_folder: Path, tmp_path: Path, models) -> None:
    memory = tmp_path / "memory.safetensors"
    ok("memory", "--folder", reference_folder, "-o", memory, *models)
    out = tmp_path / "memory.png"
    shown = ok(
        "memory", "show", memory, "-o", out, "--encoder", models[3], "--device", "cpu", "--tile-size", 32
    )
    assert "4 reference(s) pictured" in shown.output
    picture = np.asarray(Image.open(out))
    # rows: cat (a positive, then a negative), dog, "(no class)"; the widest row has 2 pairs
    assert picture.shape[:2] == (6 + 3 * (32 + 6), 140 + 6 + 2 * (2 * 32 + 6))
    red = (picture == np.array(NEGATIVE_COLOR, dtype=np.uint8)).all(axis=2)
    cat_row, dog_row, background_row = (red[6 + k * 38 : 6 + k * 38 + 32] for k in range(3))
    negative_pair = slice(140 + 6 + 70, 140 + 6 + 70 + 64)
    assert cat_row[:, negative_pair].sum() > 100  # the frame and the "not cat" label
    assert cat_row[:, 146 : 146 + 64].sum() == 0 and dog_row[:, 146:].sum() == 0  # positives unframed
    assert background_row[:, 146 : 146 + 64].sum() > 100


def test_memory_refs_negative_annotations(tmp_path: Path, models) -> None:
    annotations, images = make_coco_dataset(tmp_path / "coco", n_images=3, classes=("cat", "dog"))
    coco = json.loads(annotations.read_text())
    objects = [a for a in coco["annotations"] if a["synthetic"] == "object"]
    cats = [a for a in objects if a["category_id"] == 17]
    dogs = [a for a in objects if a["category_id"] == 18]
    cats[0]["negative"] = True  # listed before the cat positives: still added after them
    dogs[0]["negative"] = True
    dogs[0]["category_id"] = None  # a negative of no class
    dogs[-1]["negative"] = "yes"  # neither true nor false: skipped
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({**coco, "annotations": objects}))
    memory = tmp_path / "memory.safetensors"
    built = ok("memory", "--refs", refs, "--images", images, "-o", memory, *models)
    assert "write true or false" in built.stderr
    bank = MemoryBank.load(memory)
    assert bank.negative_counts() == {"cat": 1, "dog": 0, None: 1}
    assert bank.counts() == {"cat": len(cats) - 1, "dog": len(dogs) - 2}
    assert bank.category_ids == {"cat": 17, "dog": 18}
    by_annotation = {r.source["annotation_id"]: r for r in bank.references}
    assert by_annotation[cats[0]["id"]].negative and by_annotation[cats[0]["id"]].class_name == "cat"
    assert by_annotation[dogs[0]["id"]].negative and by_annotation[dogs[0]["id"]].class_name is None


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_predict_with_a_reference_folder_uses_its_negatives(
    reference_folder: Path, tmp_path: Path, models, monkeypatch, preset: str
) -> None:
    seen = []
    postprocess = matching.postprocess

    def recording(*args, **kwargs):
        seen.append(kwargs.get("examples"))
        return postprocess(*args, **kwargs)

    monkeypatch.setattr(matching, "postprocess", recording)
    targets = tmp_path / "targets"
    targets.mkdir()
    Image.fromarray(make_scene(4, size=(96, 96), radius=(10, 14)).image).save(targets / "t.png")
    out = tmp_path / "results.json"
    ok("predict", "--references", reference_folder, targets, "-o", out, "--preset", preset,
       "--points-per-side", 4, "--iou-thr", 0.0, *models)  # fmt: skip
    bank = MemoryBank.load(str(out) + ".memory.safetensors")
    assert bank.negative_counts() == {"cat": 1, "dog": 0, None: 1}
    assert len(seen) == 1
    if preset == "paper":
        assert seen[0] is None  # the paper's method ignores negatives
    else:
        assert seen[0].negative_labels.tolist() == [0, -1]  # fast: not-cat, then the background one
