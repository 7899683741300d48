"""The ``refseg`` command line, end to end on tiny random-weight models loaded from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from cocodata import make_coco_dataset, make_voc_dataset, synthesize_coco, write_coco_dataset
from PIL import Image

import refseg
from refseg.cli import cli
from refseg.data.sampling import sample_references
from refseg.data.splits import COCO_FSOD_NOVEL
from refseg.memory import MemoryBank
from refseg.runner import partial_path, sidecar_path
from refseg.segmenter import Segmenter

SRC = str(Path(refseg.__file__).resolve().parents[1])


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def ok(*args: object) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def models(tiny_sam2_dir: Path, tiny_dinov2_dir: Path) -> list[str]:
    """Model options pointing at the tiny checkpoints (the real loading path)."""
    return ["--sam2", str(tiny_sam2_dir), "--encoder", str(tiny_dinov2_dir), "--device", "cpu"]


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(annotations.json, images/) of 4 synthetic images with cats and dogs (COCO ids 17, 18)."""
    return make_coco_dataset(tmp_path_factory.mktemp("coco"), n_images=4, classes=("cat", "dog"))


@pytest.fixture(scope="module")
def built_memory(tmp_path_factory: pytest.TempPathFactory, coco_set, models) -> dict:
    """`refseg sample` then `refseg memory --refs` (the default-command form), one box-only ref."""
    out = tmp_path_factory.mktemp("memory")
    annotations, images = coco_set
    refs = out / "refs.json"
    sampled = ok("sample", annotations, "--classes", "cat,dog", "--shots", 2, "--seed", 33, "-o", refs)
    data = json.loads(refs.read_text())
    boxed = data["annotations"][-1]
    del boxed["segmentation"]  # this one goes through SAM2 box prompting
    refs.write_text(json.dumps(data))
    memory = out / "memory.safetensors"
    built = ok("memory", "--refs", refs, "--images", images, "-o", memory, *models)
    return {"refs": refs, "memory": memory, "sampled": sampled, "built": built, "boxed": boxed}


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory, coco_set) -> Path:
    """Two readable images and one broken file."""
    folder = tmp_path_factory.mktemp("targets")
    _, images = coco_set
    for name in ("000001.png", "000002.png"):
        (folder / name).write_bytes((images / name).read_bytes())
    (folder / "000003.png").write_bytes(b"not a png at all")
    return folder


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory, built_memory, target_dir, models) -> dict:
    """An uninterrupted `refseg predict` over a folder, with overlays."""
    out = tmp_path_factory.mktemp("predict") / "results.json"
    vis = out.parent / "vis"
    result = invoke(
        "predict", "--memory", built_memory["memory"], target_dir, "-o", out, "--vis", vis,
        "--points-per-side", 4, *models,
    )  # fmt: skip
    return {"result": result, "out": out, "vis": vis}


# ----------------------------------------------------------------------------- help


def test_python_m_refseg_help() -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(
        [sys.executable, "-m", "refseg", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    for verb in ("sample", "memory", "predict", "eval", "reproduce", "boxes-to-masks", "voc2coco", "app"):
        assert verb in completed.stdout


@pytest.mark.parametrize(
    "verb",
    [
        ["sample"],
        ["memory"],
        ["memory", "build"],
        ["memory", "info"],
        ["predict"],
        ["eval"],
        ["reproduce", "coco-fsod"],
        ["boxes-to-masks"],
        ["voc2coco"],
    ],
)
def test_every_verb_explains_itself_with_an_example(verb: list[str]) -> None:
    result = ok(*verb, "--help")
    assert "Example" in result.output and "refseg " + verb[0] in result.output


def test_viz_verbs_are_registered() -> None:
    assert "Picture a memory file" in ok("memory", "show", "--help").output
    assert "--port" in ok("app", "--help").output


# ----------------------------------------------------------------------------- sample + memory


def test_sample_writes_the_seeded_draw(built_memory, coco_set) -> None:
    annotations, _ = coco_set
    expected = sample_references(json.loads(annotations.read_text()), "cat,dog", 2, 33)
    written = json.loads(built_memory["refs"].read_text())
    assert [a["id"] for a in written["annotations"]] == [a["id"] for a in expected["annotations"]]
    assert (
        "cat" in built_memory["sampled"].output
        and str(built_memory["refs"]) in built_memory["sampled"].output
    )


def test_memory_build_keeps_category_ids_and_prompts_sam2_for_boxes(built_memory) -> None:
    bank = MemoryBank.load(built_memory["memory"])
    assert sorted(bank.class_names) == ["cat", "dog"]
    assert bank.category_ids == {"cat": 17, "dog": 18}
    assert sum(bank.counts().values()) == 4
    boxed = [r for r in bank.references if r.source.get("annotation_id") == built_memory["boxed"]["id"]]
    assert len(boxed) == 1 and boxed[0].source["prompt"] == "box"
    assert "4 references of 2 classes" in built_memory["built"].output


def test_memory_build_from_a_folder_and_info(tmp_path: Path, coco_set, models) -> None:
    _, images = coco_set
    pixels = np.asarray(Image.open(images / "000000.png"))
    mask = np.zeros(pixels.shape[:2], dtype=np.uint8)
    mask[30:80, 40:100] = 255
    for class_name, stem, mask_name in (("dog", "a", "a.mask.png"), ("cat", "b", "b_mask.png")):
        (tmp_path / "refs" / class_name).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "refs" / class_name / f"{stem}.jpg")
        Image.fromarray(mask).save(tmp_path / "refs" / class_name / mask_name)
    Image.fromarray(pixels).save(tmp_path / "refs" / "cat" / "lonely.png")  # no mask: reported
    memory = tmp_path / "folder.safetensors"

    built = ok("memory", "build", "--folder", tmp_path / "refs", "-o", memory, *models)

    assert "lonely.png" in built.stderr and "1 reference(s) skipped" in built.stderr
    bank = MemoryBank.load(memory)
    assert bank.category_ids == {"cat": 1, "dog": 2} and bank.counts() == {"dog": 1, "cat": 1}
    info = ok("memory", "info", memory).output
    assert "cat" in info and "dog" in info and "KiB" in info and refseg.__version__ in info
    assert "encoder:" in info


# ----------------------------------------------------------------------------- predict


def test_predict_folder_writes_results_image_ids_overlays_and_error_report(folder_run) -> None:
    result, out = folder_run["result"], folder_run["out"]
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    mapping = json.loads(sidecar_path(out, "images").read_text())
    assert [(i["id"], i["file_name"]) for i in mapping["images"]] == [(1, "000001.png"), (2, "000002.png")]
    assert {r["image_id"] for r in results} <= {1, 2}
    assert {r["category_id"] for r in results} <= {17, 18}
    assert all(set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"} for r in results)
    errors = json.loads(sidecar_path(out, "errors").read_text())
    assert [e["file_name"] for e in errors] == ["000003.png"]
    assert "could not be read" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert sorted(p.name for p in folder_run["vis"].iterdir()) == ["000001.png", "000002.png"]
    assert not partial_path(out).exists()


def test_predict_resume_after_a_crash_gives_the_uninterrupted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_memory, target_dir, folder_run, models
) -> None:
    out = tmp_path / "results.json"
    args = [
        "predict",
        "--memory",
        built_memory["memory"],
        target_dir,
        "-o",
        out,
        "--points-per-side",
        4,
        *models,
    ]
    original = Segmenter.predict
    calls = []

    def crash_on_second(self, image):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, image)

    monkeypatch.setattr(Segmenter, "predict", crash_on_second)
    assert invoke(*args).exit_code != 0
    assert not out.exists() and partial_path(out).exists()
    monkeypatch.setattr(Segmenter, "predict", original)

    resumed = ok(*args, "--resume")

    assert "1 done by an earlier run" in resumed.output
    assert out.read_bytes() == folder_run["out"].read_bytes()
    assert sidecar_path(out, "images").read_bytes() == sidecar_path(folder_run["out"], "images").read_bytes()


def test_predict_coco_targets_then_eval(tmp_path: Path, coco_set, built_memory, models) -> None:
    annotations, images = coco_set
    out = tmp_path / "results.json"
    ok("predict", "--memory", built_memory["memory"], "--coco", annotations, "--images", images, "--limit", 2,
       "-o", out, "--points-per-side", 4, *models)  # fmt: skip
    gt_ids = [i["id"] for i in json.loads(annotations.read_text())["images"]]
    mapping = json.loads(sidecar_path(out, "images").read_text())
    assert [i["id"] for i in mapping["images"]] == gt_ids[:2]

    summary_path = tmp_path / "summary.json"
    evaluated = ok("eval", "--gt", annotations, "--results", out, "--images-json", sidecar_path(out, "images"),
                   "--classes", "cat,dog", "-o", summary_path)  # fmt: skip

    assert "IoU type: bbox" in evaluated.output and "IoU type: segm" in evaluated.output
    assert evaluated.output.count("Average Precision") == 12
    summary = json.loads(summary_path.read_text())
    assert summary["num_images"] == 2 and set(summary["bbox"]) >= {"AP", "AP50", "AP75"}


def test_eval_box_only_ground_truth_scores_bbox_only(tmp_path: Path) -> None:
    voc_root, _ = make_voc_dataset(tmp_path, n_images=2)
    gt = tmp_path / "voc.json"
    ok("voc2coco", voc_root, "--classes", "dog,cat,sofa", "-o", gt)
    data = json.loads(gt.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in data["annotations"]]  # fmt: skip
    results = tmp_path / "perfect.json"
    results.write_text(json.dumps(perfect))

    evaluated = ok("eval", "--gt", gt, "--results", results, "-o", tmp_path / "s.json")

    assert "bbox only" in evaluated.stderr and "IoU type: segm" not in evaluated.stdout
    assert json.loads((tmp_path / "s.json").read_text())["bbox"]["AP"] == pytest.approx(100.0)


def test_voc2coco_then_boxes_to_masks(tmp_path: Path, tiny_sam2_dir: Path) -> None:
    voc_root, truth = make_voc_dataset(tmp_path, n_images=2)
    converted = tmp_path / "voc.json"
    result = ok("voc2coco", voc_root, "--classes", "dog,cat,sofa", "-o", converted)
    assert f"images folder: {voc_root.parent.resolve()}" in result.output
    masked = tmp_path / "voc_masks.json"

    ok("boxes-to-masks", converted, "--images", voc_root.parent, "-o", masked,
       "--sam2", tiny_sam2_dir, "--device", "cpu")  # fmt: skip

    data = json.loads(masked.read_text())
    assert len(data["annotations"]) == sum(len(objects) for objects in truth.values())
    assert all(a["segmentation"]["size"] == [90, 120] for a in data["annotations"])


# ----------------------------------------------------------------------------- reproduce


def test_reproduce_coco_fsod_on_a_tiny_coco_layout(tmp_path: Path, models) -> None:
    root = tmp_path / "coco"
    for split, seed, first_id in (("train", 1, 1), ("val", 2, 500)):
        data = synthesize_coco(3, ("cat", "dog"), seed=seed, first_image_id=first_id)
        known = {c["name"] for c in data.coco["categories"]}
        data.coco["categories"] += [
            {"id": 900 + k, "name": name} for k, name in enumerate(COCO_FSOD_NOVEL) if name not in known
        ]
        json_path, image_dir = write_coco_dataset(data, tmp_path / split)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        json_path.rename(root / "annotations" / f"instances_{split}2017.json")
        image_dir.rename(root / f"{split}2017")
    run = tmp_path / "run"

    result = ok("reproduce", "coco-fsod", "--shots", 1, "--seed", 33, "--coco-root", root, "--out", run,
                "--limit", 1, "--points-per-side", 4, *models)  # fmt: skip

    assert {p.name for p in run.iterdir()} >= {
        "refs.json",
        "memory.safetensors",
        "results.json",
        "summary.json",
    }
    assert "25.6" in result.output and "24.1" in result.output and "not comparable" in result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_images"] == 1 and summary["run"]["shots"] == 1
    assert result.stdout.strip().splitlines()[-1] == str(run / "summary.json")

    again = ok("reproduce", "coco-fsod", "--shots", 1, "--seed", 33, "--coco-root", root, "--out", run,
               "--limit", 1, "--points-per-side", 4, "--resume", *models)  # fmt: skip
    assert "references: reusing" in again.output and "memory: reusing" in again.output
    assert json.loads((run / "summary.json").read_text())["bbox"] == summary["bbox"]


# ----------------------------------------------------------------------------- errors


def test_missing_weights_is_a_message_not_a_traceback(tmp_path: Path, built_memory, target_dir) -> None:
    result = invoke("predict", "--memory", built_memory["memory"], target_dir, "-o", tmp_path / "r.json",
                    "--sam2", tmp_path / "no-such-sam2", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 1
    assert "Error: Could not load the SAM2 model" in result.stderr and "--sam2" in result.stderr
    assert "Traceback" not in result.output


def test_memory_of_another_encoder_is_refused(
    tmp_path: Path, built_memory, target_dir, tiny_sam2_dir: Path, tiny_dinov2_registers_dir: Path
) -> None:
    result = invoke("predict", "--memory", built_memory["memory"], target_dir, "-o", tmp_path / "r.json",
                    "--sam2", tiny_sam2_dir, "--encoder", tiny_dinov2_registers_dir, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 1 and "Error: This memory bank was built with encoder" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["memory", "-o", "m.safetensors"], "Give either --refs"),
        (["memory", "info", "missing.safetensors"], "Memory file not found"),
        (["sample", "missing.json", "--classes", "cat", "--shots", "1", "-o", "r.json"], "not found"),
        (["eval", "--gt", "missing.json", "--results", "r.json"], "not found"),
    ],
)
def test_user_errors_exit_1_with_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output


def test_predict_needs_existing_targets(tmp_path: Path, built_memory, models) -> None:
    result = invoke("predict", "--memory", built_memory["memory"], tmp_path / "nothing-here", "-o",
                    tmp_path / "r.json", *models)  # fmt: skip
    assert result.exit_code == 1 and "No such image file or folder" in result.stderr


def test_predict_with_a_reference_folder_runs_the_readme_example(tmp_path: Path, models) -> None:
    """The README's Quick start example, on the shipped example, with tiny models instead of the hub's."""
    example = Path(__file__).resolve().parents[1] / "examples" / "coins"
    out = tmp_path / "coins" / "results.json"
    result = ok(
        "predict", "--references", example / "references", example / "targets", "-o", out,
        "--vis", tmp_path / "vis", "--points-per-side", 4, *models,
    )  # fmt: skip
    assert "coin" in result.stdout
    bank = MemoryBank.load(str(out) + ".memory.safetensors")
    assert bank.counts() == {"coin": 1}
    results = json.loads(out.read_text())
    assert {r["category_id"] for r in results} <= {1}
    assert (tmp_path / "vis" / "coins_bottom.png").is_file()
    assert ok("eval", "--gt", example / "targets_gt.json", "--results", out).exit_code == 0
    both = invoke("predict", "--references", example / "references", "--memory", out, example / "targets",
                  "-o", out, *models)  # fmt: skip
    assert both.exit_code == 1 and "either --memory" in both.output
