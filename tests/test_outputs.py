"""Outputs through the command line: every verb checks each output before loading a model or
doing any work; overlays stay inside their folder and never share a file; one run per output."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from cocodata import make_coco_dataset, make_voc_dataset
from PIL import Image

from refseg.cli import cli
from refseg.errors import InvalidInputError

# Model options that cannot load: a verb that got as far as loading them would say so.
NO_MODELS = ["--sam2", "/nonexistent/sam2", "--encoder", "/nonexistent/dino", "--device", "cpu"]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    annotations, images = make_coco_dataset(root / "coco", n_images=2, classes=("cat", "dog"))
    voc_root, _ = make_voc_dataset(root / "voc", n_images=1)
    refs = root / "refs" / "cat"
    refs.mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(refs / "a.png")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(refs / "a.mask.png")
    blocker = root / "blocker.txt"
    blocker.write_text("a file where a folder should be")
    return {
        "annotations": annotations,
        "images": images,
        "voc": voc_root,
        "refs": root / "refs",
        "memory": root / "missing.safetensors",
        "blocker": blocker,
    }


def verb_args(verb: str, inputs: dict[str, Path], out: Path) -> list[object]:
    """The arguments of ``verb`` with ``out`` as its output (models that cannot load)."""
    return {
        "sample": ["sample", inputs["annotations"], "--classes", "cat", "--shots", 1, "-o", out],
        "memory": ["memory", "--folder", inputs["refs"], "-o", out, *NO_MODELS],
        "memory-refs": ["memory", "--refs", inputs["annotations"], "--images", inputs["images"], "-o", out,
                        *NO_MODELS],
        "memory-show": ["memory", "show", inputs["memory"], "-o", out, "--encoder", "/nonexistent/dino"],
        "predict": ["predict", "--memory", inputs["memory"], inputs["images"], "-o", out, *NO_MODELS],
        "predict-vis": ["predict", "--memory", inputs["memory"], inputs["images"], "-o",
                        out.parent.parent / "ok" / "r.json", "--vis", out, *NO_MODELS],
        "predict-references": ["predict", "--references", inputs["refs"], inputs["images"], "-o", out,
                               *NO_MODELS],
        "eval": ["eval", "--gt", inputs["annotations"], "--results", inputs["annotations"], "-o", out],
        "reproduce": ["reproduce", "coco-fsod", "--coco-root", inputs["voc"], "--out", out, *NO_MODELS],
        "boxes-to-masks": ["boxes-to-masks", inputs["annotations"], "--images", inputs["images"], "-o", out,
                           *NO_MODELS[:2], "--device", "cpu"],
        "voc2coco": ["voc2coco", inputs["voc"], "-o", out],
    }[verb]  # fmt: skip


VERBS = [
    "sample",
    "memory",
    "memory-refs",
    "memory-show",
    "predict",
    "predict-vis",
    "predict-references",
    "eval",
    "reproduce",
    "boxes-to-masks",
    "voc2coco",
]


@pytest.mark.parametrize("verb", VERBS)
def test_an_output_under_a_file_stops_every_verb_before_any_work(verb: str, inputs) -> None:
    out = inputs["blocker"] / "sub" / "out.json"
    result = invoke(*verb_args(verb, inputs, out))
    assert result.exit_code == 1, result.output
    assert "Error: Cannot write" in result.stderr and "is a file, not a folder" in result.stderr
    assert "Traceback" not in result.output and "Could not load" not in result.output


@pytest.mark.parametrize("verb", ["sample", "memory", "predict", "eval", "boxes-to-masks", "voc2coco"])
def test_a_folder_given_as_the_output_file_says_so(verb: str, inputs, tmp_path: Path) -> None:
    result = invoke(*verb_args(verb, inputs, tmp_path))
    assert result.exit_code == 1, result.output
    assert f"Error: {tmp_path} is a folder; give a file name such as {tmp_path}/" in result.stderr


@pytest.mark.parametrize(
    "beside", ["results.json.images.json", "results.json.memory.safetensors", "results.json.lock"]
)
def test_predict_checks_the_files_beside_its_output_before_loading_models(
    inputs, tmp_path: Path, beside: str
):
    """The sidecars, the folder memory and the lock are outputs too."""
    (tmp_path / beside).mkdir()
    result = invoke("predict", "--references", inputs["refs"], inputs["images"], "-o", tmp_path / "results.json",
                    *NO_MODELS)  # fmt: skip
    assert result.exit_code == 1
    assert f"{beside} is a folder" in result.stderr and "Could not load" not in result.stderr


def test_memory_show_refuses_a_picture_format_it_cannot_write(inputs, tmp_path: Path) -> None:
    result = invoke("memory", "show", inputs["memory"], "-o", tmp_path / "picture.xyz")
    assert result.exit_code == 1 and "extension '.xyz'" in result.stderr


def test_an_unwritable_results_json_fails_cleanly_at_the_end(tmp_path: Path, monkeypatch) -> None:
    """Space running out while the final files are written: Error, exit 1, no temporary left."""
    import errno

    import refseg.files as files

    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
    source = tmp_path / "in.json"
    source.write_text(json.dumps(data))
    real = files.os.replace

    def full(src, dst):
        if str(dst).endswith("out.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", full)
    result = invoke("voc2coco", tmp_path / "missing-root", "-o", tmp_path / "out.json")
    assert result.exit_code == 1  # the root is missing: refused before writing anything
    result = invoke("eval", "--gt", source, "--results", tmp_path / "r.json", "-o", tmp_path / "out.json")
    assert result.exit_code == 1
    (tmp_path / "r.json").write_text("[]")
    result = invoke("eval", "--gt", source, "--results", tmp_path / "r.json", "-o", tmp_path / "out.json")
    assert result.exit_code == 1 and "no space left on the disk" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json", "r.json"]


# ----------------------------------------------------------------------------- overlays


def test_overlay_names_never_leave_the_folder_nor_share_a_file(tmp_path: Path) -> None:
    from refseg.runner import overlay_paths
    from refseg.targets import Target

    names = ["a.jpg", "a.png", "b.jpg", "sub/c.jpg", "../../../victim.jpg", "victim.jpg", "/abs/B.JPG"]
    targets = [Target(tmp_path / "x", name, index + 1) for index, name in enumerate(names)]
    vis = tmp_path / "vis"
    paths = overlay_paths(targets, vis)
    relative = {name: path.relative_to(vis).as_posix() for name, path in paths.items()}
    assert relative == {
        "a.jpg": "a.jpg.png",
        "a.png": "a.png.png",
        "b.jpg": "b.png",
        "sub/c.jpg": "sub/c.png",
        "../../../victim.jpg": "victim.jpg.id5.png",
        "victim.jpg": "victim.jpg.id6.png",
        "/abs/B.JPG": "abs/B.png",
    }


@pytest.fixture(scope="module")
def tiny(tiny_sam2_dir: Path, tiny_dinov2_dir: Path) -> list[str]:
    return ["--sam2", str(tiny_sam2_dir), "--encoder", str(tiny_dinov2_dir), "--device", "cpu"]


@pytest.fixture(scope="module")
def memory_file(tmp_path_factory: pytest.TempPathFactory, inputs, tiny) -> Path:
    memory = tmp_path_factory.mktemp("memory") / "memory.safetensors"
    result = invoke("memory", "--folder", inputs["refs"], "-o", memory, *tiny)
    assert result.exit_code == 0, result.output
    return memory


def test_vis_never_writes_outside_its_folder(tmp_path: Path, inputs, tiny, memory_file) -> None:
    """A COCO file_name of ../../../victim.jpg once overwrote victim.png beside the images."""
    images = tmp_path / "a" / "b" / "c"
    images.mkdir(parents=True)
    pixels = np.asarray(Image.open(inputs["images"] / "000000.png"))
    Image.fromarray(pixels).save(tmp_path / "victim.jpg")
    Image.fromarray(pixels).save(images / "a.jpg")
    Image.fromarray(pixels).save(images / "a.png")
    (tmp_path / "victim.png").write_bytes(b"precious")
    height, width = pixels.shape[:2]
    coco = {
        "images": [
            {"id": 1, "file_name": "../../../victim.jpg", "height": height, "width": width},
            {"id": 2, "file_name": "a.jpg", "height": height, "width": width},
            {"id": 3, "file_name": "a.png", "height": height, "width": width},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "cat"}],
    }
    (tmp_path / "t.json").write_text(json.dumps(coco))
    before = {p for p in tmp_path.rglob("*") if "out" not in p.parts}
    vis = tmp_path / "out" / "vis"
    result = invoke("predict", "--coco", tmp_path / "t.json", "--images", images, "--memory", memory_file,
                    "-o", tmp_path / "out" / "r.json", "--vis", vis, "--points-per-side", 2, *tiny)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "victim.png").read_bytes() == b"precious"
    assert {p for p in tmp_path.rglob("*") if "out" not in p.parts} == before
    assert sorted(p.name for p in vis.iterdir()) == ["a.jpg.png", "a.png.png", "victim.png"]


# ----------------------------------------------------------------------------- category ids


def test_predict_coco_gives_results_the_jsons_category_ids(tmp_path: Path, inputs, tiny, memory_file) -> None:
    """A --folder memory numbers its classes 1..K; the json's cat is 17."""
    out = tmp_path / "r.json"
    result = invoke("predict", "--coco", inputs["annotations"], "--images", inputs["images"], "--memory",
                    memory_file, "-o", out, "--points-per-side", 2, *tiny)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cat 1 -> 17" in result.stderr
    assert json.loads((tmp_path / "r.json.images.json").read_text())["categories"] == [
        {"id": 17, "name": "cat"}
    ]
    assert {r["category_id"] for r in json.loads(out.read_text())} <= {17}


def test_predict_coco_refuses_a_memory_whose_classes_the_json_lacks(
    tmp_path: Path, inputs, tiny, memory_file
):
    from refseg.memory import MemoryBank

    bank = MemoryBank.load(memory_file)
    other = MemoryBank(bank.encoder, bank.context_ratio)
    other.add(bank.reference_features[0], "kitty")
    other.save(tmp_path / "kitty.safetensors")
    result = invoke("predict", "--coco", inputs["annotations"], "--images", inputs["images"], "--memory",
                    tmp_path / "kitty.safetensors", "-o", tmp_path / "r.json", *tiny)  # fmt: skip
    assert result.exit_code == 1
    assert "class(es) 'kitty' are not categories of the targets' json" in result.stderr
    assert "cat, dog" in result.stderr and not (tmp_path / "r.json").exists()


def test_eval_refuses_results_of_other_category_ids(tmp_path: Path, inputs) -> None:
    """Results of a 1..K memory against a json of ids 17, 18 printed all zeros, exit 0."""
    results = [{"image_id": 0, "category_id": 1, "score": 0.9, "bbox": [1, 2, 30, 30]}]
    (tmp_path / "r.json").write_text(json.dumps(results))
    (tmp_path / "r.json.images.json").write_text(
        json.dumps({"images": [], "categories": [{"id": 1, "name": "cat"}]})
    )
    result = invoke("eval", "--gt", inputs["annotations"], "--results", tmp_path / "r.json")
    assert result.exit_code == 1
    assert (
        "None of the results' category ids (1) is a category of the ground truth (cat=17, dog=18)"
        in result.stderr
    )
    assert "the results name theirs cat=1" in result.stderr and "--coco" in result.stderr


# ----------------------------------------------------------------------------- runs that did nothing


def test_predict_where_every_image_fails_exits_1_with_the_summary(tmp_path: Path, tiny, memory_file) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        (targets / name).write_bytes(b"not a picture")
    out = tmp_path / "r.json"
    result = invoke("predict", "--memory", memory_file, targets, "-o", out, *tiny)
    assert result.exit_code == 1
    assert "0 instances on 0 images; this process segmented 0" in result.stdout
    assert "Error: None of the 3 image(s) could be read (first: a.png: Cannot read image" in result.stderr
    assert len(json.loads((tmp_path / "r.json.errors.json").read_text())) == 3


def test_this_process_counts_only_the_images_it_segmented(tmp_path: Path, inputs, tiny, memory_file) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "a.png").write_bytes((inputs["images"] / "000000.png").read_bytes())
    (targets / "b.png").write_bytes(b"not a picture")
    result = invoke("predict", "--memory", memory_file, targets, "-o", tmp_path / "r.json",
                    "--points-per-side", 2, *tiny)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "on 1 images; this process segmented 1 " in result.stdout
    assert "1 image(s) could not be read" in result.stderr


def test_boxes_to_masks_that_made_no_mask_exits_1(tmp_path: Path, inputs, tiny_sam2_dir: Path) -> None:
    data = json.loads(inputs["annotations"].read_text())
    for annotation in data["annotations"]:
        annotation.pop("segmentation", None)
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("boxes-to-masks", tmp_path / "boxes.json", "--images", empty, "-o", tmp_path / "m.json",
                    "--sam2", tiny_sam2_dir, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 1
    assert f"Error: No mask made: all {len(data['images'])} image(s) with boxes were skipped" in result.stderr
    assert not (tmp_path / "m.json").exists()
    data["annotations"] = []
    (tmp_path / "none.json").write_text(json.dumps(data))
    result = invoke("boxes-to-masks", tmp_path / "none.json", "--images", inputs["images"], "-o",
                    tmp_path / "m.json", "--sam2", tiny_sam2_dir, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 1 and "No mask to make" in result.stderr


# ----------------------------------------------------------------------------- SAM2 only when a box needs it


@pytest.fixture
def sam2_without_weights(tmp_path: Path, tiny_sam2_dir: Path) -> Path:
    """A SAM2 folder whose config is fine and whose weights are missing: loading them fails."""
    folder = tmp_path / "sam2-config-only"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_sam2_dir / "config.json").read_bytes())
    return folder


def test_memory_from_masks_never_loads_sam2(tmp_path: Path, inputs, tiny_dinov2_dir, sam2_without_weights):
    models = ["--sam2", sam2_without_weights, "--encoder", tiny_dinov2_dir, "--device", "cpu"]
    result = invoke("memory", "--folder", inputs["refs"], "-o", tmp_path / "f.safetensors", *models)
    assert result.exit_code == 0, result.output
    result = invoke("memory", "--refs", inputs["annotations"], "--images", inputs["images"], "-o",
                    tmp_path / "r.safetensors", *models)  # fmt: skip
    assert result.exit_code == 0, result.output  # every sampled reference has a segmentation


def test_a_box_reference_with_sam2_out_of_reach_stops_the_build(
    tmp_path: Path, inputs, tiny_dinov2_dir, sam2_without_weights
) -> None:
    """Not 'every reference skipped': SAM2's weights are the run's problem, not a reference's."""
    data = json.loads(inputs["annotations"].read_text())
    data["annotations"][0].pop("segmentation")
    (tmp_path / "refs.json").write_text(json.dumps(data))
    result = invoke("memory", "--refs", tmp_path / "refs.json", "--images", inputs["images"], "-o",
                    tmp_path / "m.safetensors", "--sam2", sam2_without_weights, "--encoder", tiny_dinov2_dir,
                    "--device", "cpu")  # fmt: skip
    assert result.exit_code == 1
    assert "Error: Could not load the SAM2 model" in result.stderr and "skipped" not in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_segmenter_loads_sam2_on_first_use(tiny_sam2_dir: Path, tiny_dinov2_dir: Path) -> None:
    from refseg import Segmenter

    segmenter = Segmenter.from_pretrained("fast", sam2=tiny_sam2_dir, encoder=tiny_dinov2_dir, device="cpu")
    assert not segmenter.proposer.loaded
    image = np.asarray(Image.new("RGB", (64, 48), (90, 120, 30)))
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:40] = True
    segmenter.add_reference(image, "thing", mask=mask)
    assert not segmenter.proposer.loaded
    with contextlib.suppress(InvalidInputError):  # random weights: a mask, or none in the box
        segmenter.reference_mask(image, box=(0, 0, 64, 48))
    assert segmenter.proposer.loaded and segmenter.proposer.image_size == 1024


# ----------------------------------------------------------------------------- what the verbs say


def test_memory_skips_are_listed_once_as_file_and_annotation(tmp_path: Path, inputs, tiny) -> None:
    data = json.loads(inputs["annotations"].read_text())
    data["images"][0]["file_name"] = "gone.png"
    (tmp_path / "refs.json").write_text(json.dumps(data))
    gone = [a["id"] for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]
    result = invoke("memory", "--refs", tmp_path / "refs.json", "--images", inputs["images"], "-o",
                    tmp_path / "m.safetensors", *tiny)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"  skipped gone.png (annotation {gone[0]}): Image not found" in result.stderr
    assert result.stderr.count(f"(annotation {gone[0]})") == 1
    assert "{" not in result.stderr and "Loading weights" not in result.stderr


def test_boxes_to_masks_reports_each_skip_once(tmp_path: Path, inputs, tiny_sam2_dir: Path) -> None:
    data = json.loads(inputs["annotations"].read_text())
    for annotation in data["annotations"]:
        annotation.pop("segmentation", None)
    data["images"][0]["file_name"] = "gone.png"
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    result = invoke("boxes-to-masks", tmp_path / "boxes.json", "--images", inputs["images"], "-o",
                    tmp_path / "m.json", "--sam2", tiny_sam2_dir, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr.count("Image not found") == 1
    assert f"skipped gone.png (image {data['images'][0]['id']}): Image not found" in result.stderr
    assert "Loading weights" not in result.stderr


def test_resume_refusal_names_only_the_setting_that_changed(
    tmp_path: Path, inputs, tiny, memory_file
) -> None:
    from refseg.runner import partial_path

    out = tmp_path / "r.json"
    first = invoke("predict", "--memory", memory_file, inputs["images"], "-o", out, "--points-per-side", 2,
                   "--limit", 1, *tiny)  # fmt: skip
    assert first.exit_code == 0, first.output
    # an interrupted run leaves its partial file: make one by stopping after the header
    import refseg.runner as runner

    real = runner._predict_one

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    runner._predict_one = stop
    try:
        invoke_result = CliRunner().invoke(cli, [str(a) for a in ("predict", "--memory", memory_file,
                                                 inputs["images"], "-o", out, "--points-per-side", 2, *tiny)])  # fmt: skip
    finally:
        runner._predict_one = real
    assert invoke_result.exit_code != 0 and partial_path(out).exists()
    refused = invoke("predict", "--memory", memory_file, inputs["images"], "-o", out, "--points-per-side", 3,
                     "--resume", *tiny)  # fmt: skip
    assert refused.exit_code == 1
    assert "points_per_side was 2, now 3" in refused.stderr and "iou_threshold" not in refused.stderr


def test_names_that_are_not_utf8_never_crash_printing(tmp_path: Path) -> None:
    import os

    from refseg.cli.options import echo

    name = os.fsdecode(b"caf\xe9.safetensors")  # a lone surrogate, as os.listdir gives it
    result = invoke("memory", "info", tmp_path / name)
    assert result.exit_code == 1 and "Error: Memory file not found" in result.stderr
    assert "caf\\udce9" in result.stderr and "Traceback" not in result.output

    import click

    @click.command()
    def say() -> None:
        echo("class " + name)

    printed = CliRunner().invoke(say, [])
    assert printed.exit_code == 0 and "class caf\\udce9" in printed.output


# ----------------------------------------------------------------------------- outputs that are inputs


def test_no_verb_writes_over_one_of_its_inputs(tmp_path: Path, inputs, memory_file) -> None:
    """'predict -o MEMORY' replaced the memory bank by results; 'sample X -o X' the data set."""
    memory = tmp_path / "memory.safetensors"
    memory.write_bytes(memory_file.read_bytes())
    gt = tmp_path / "gt.json"
    gt.write_bytes(inputs["annotations"].read_bytes())
    target = tmp_path / "t" / "a.png"
    target.parent.mkdir()
    target.write_bytes((inputs["images"] / "000000.png").read_bytes())
    before = {p: p.read_bytes() for p in (memory, gt, target)}
    cases = [
        ["predict", "--memory", memory, target.parent, "-o", memory, *NO_MODELS],
        ["predict", "--memory", memory, target.parent, "-o", target, *NO_MODELS],
        ["predict", "--coco", gt, "--images", inputs["images"], "--memory", memory, "-o", gt, *NO_MODELS],
        ["sample", gt, "--classes", "cat", "--shots", 1, "-o", gt],
        ["eval", "--gt", gt, "--results", gt, "-o", gt],
        ["boxes-to-masks", gt, "--images", inputs["images"], "-o", gt, *NO_MODELS[:2]],
        ["memory", "--refs", gt, "--images", inputs["images"], "-o", gt, *NO_MODELS],
        ["memory", "show", memory, "-o", memory.with_suffix(".png"), "--coco", memory.with_suffix(".png")],
    ]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "is an input of this run" in result.stderr and "Could not load" not in result.stderr, args
    assert {p: p.read_bytes() for p in before} == before


def test_overlays_cannot_go_into_the_results_file(tmp_path: Path, memory_file, inputs) -> None:
    out = tmp_path / "r.json"
    result = invoke("predict", "--memory", memory_file, inputs["images"], "-o", out, "--vis", out, *NO_MODELS)
    assert result.exit_code == 1 and "give overlays a folder of their own" in result.stderr
    assert not out.exists()
