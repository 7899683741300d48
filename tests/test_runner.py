"""The predict runner: targets, streamed results, resume, error report, rank split and merge."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refseg import PAPER, MemoryBank
from refseg.errors import InvalidInputError
from refseg.instances import Instances
from refseg.masks import masks_to_boxes_exclusive as masks_to_boxes
from refseg.models.base import EncoderIdentity
from refseg.references import add_coco_references, folder_references, read_mask
from refseg.runner import (
    partial_path,
    partial_paths,
    predict_files,
    read_partial,
    sidecar_path,
)
from refseg.targets import Target, coco_targets, collect_targets


class FakeMemory:
    class_names = ["bright", "dark"]
    category_ids = {"bright": 7, "dark": 9}

    def __init__(self, references: int = 2) -> None:
        self.references = references

    def __len__(self) -> int:
        return self.references


class FakeSegmenter:
    """Two instances per image: bright pixels and dark pixels, scored by their share."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.memory = FakeMemory()
        self.calls: list[tuple[int, int]] = []
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def predict(self, image: np.ndarray) -> Instances:
        with self.lock:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise KeyboardInterrupt("stopped by the test")
            self.calls.append(image.shape[:2])
        gray = image.mean(axis=2)
        masks = np.stack([gray > 127, gray <= 127])
        scores = masks.mean(axis=(1, 2)).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        keep = order[masks[order].any(axis=(1, 2))]
        return Instances(
            masks=masks[keep],
            boxes=masks_to_boxes(masks[keep]),
            scores=scores[keep],
            labels=np.array([0, 1], dtype=np.int64)[keep],
            class_names=list(FakeMemory.class_names),
        )


def make_images(folder: Path, count: int, size: tuple[int, int] = (12, 16), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        array = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    make_images(tmp_path / "imgs", 6)
    return tmp_path / "imgs"


# ----------------------------------------------------------------------------- targets


def test_collect_targets_from_folder_glob_and_file(tmp_path: Path, image_dir: Path) -> None:
    (image_dir / "notes.txt").write_text("not an image")
    nested = tmp_path / "more" / "deep"
    make_images(nested, 2, seed=1)
    extra = tmp_path / "single.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(extra)

    targets = collect_targets(
        [image_dir, str(tmp_path / "more" / "**" / "*.png"), extra, image_dir / "img00.png"]
    )

    names = [t.file_name for t in targets]
    assert names == [f"img{i:02d}.png" for i in range(6)] + ["deep/img00.png", "deep/img01.png", "single.png"]
    assert [t.image_id for t in targets] == list(range(1, 10))
    assert collect_targets([image_dir, str(tmp_path / "more" / "**" / "*.png"), extra]) == targets


def test_collect_targets_names_stay_unique(tmp_path: Path) -> None:
    make_images(tmp_path / "a", 1)
    make_images(tmp_path / "b", 1)
    targets = collect_targets([tmp_path / "a", tmp_path / "b"])
    assert [t.file_name for t in targets] == ["a/img00.png", "b/img00.png"]


@pytest.mark.parametrize("bad", ["missing_folder", "nothing/*.jpg"])
def test_collect_targets_rejects_missing_inputs(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="No"):
        collect_targets([str(tmp_path / bad)])


def test_coco_targets_keep_the_json_ids(tmp_path: Path, image_dir: Path) -> None:
    gt = {"images": [{"id": 42, "file_name": "img01.png"}, {"id": 7, "file_name": "img00.png"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    targets = coco_targets(tmp_path / "gt.json", image_dir)
    assert targets == [
        Target(image_dir / "img01.png", "img01.png", 42),
        Target(image_dir / "img00.png", "img00.png", 7),
    ]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="bad.json"):
        coco_targets(tmp_path / "bad.json", image_dir)


# ----------------------------------------------------------------------------- the loop


def test_predict_files_writes_coco_results_and_image_map(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    segmenter = FakeSegmenter()
    out = tmp_path / "out" / "results.json"

    summary = predict_files(segmenter, targets, out, progress=False)

    results = json.loads(out.read_text())
    assert summary.merged and summary.processed == 6 and summary.errors == 0
    assert summary.instances == len(results) == 12
    expected = []
    for target in targets:
        image = np.asarray(Image.open(target.path).convert("RGB"))
        expected += FakeSegmenter().predict(image).to_coco(target.image_id, FakeMemory.category_ids)
    assert results == json.loads(json.dumps(expected))
    assert {r["category_id"] for r in results} == {7, 9}
    mapping = json.loads(sidecar_path(out, "images").read_text())
    assert mapping["images"][0] == {"id": 1, "file_name": "img00.png", "height": 12, "width": 16}
    assert mapping["categories"] == [{"id": 7, "name": "bright"}, {"id": 9, "name": "dark"}]
    assert partial_paths(out) == [] and not sidecar_path(out, "errors").exists()


def test_unreadable_images_are_reported_and_skipped(tmp_path: Path, image_dir: Path) -> None:
    (image_dir / "img02.png").write_bytes(b"this is no png")
    targets = collect_targets([image_dir])
    out = tmp_path / "results.json"

    summary = predict_files(FakeSegmenter(), targets, out, progress=False)

    assert summary.errors == 1 and summary.errors_path == sidecar_path(out, "errors")
    errors = json.loads(summary.errors_path.read_text())
    assert [(e["file_name"], e["image_id"]) for e in errors] == [("img02.png", 3)]
    assert "Cannot read image" in errors[0]["error"]
    results = json.loads(out.read_text())
    assert sorted({r["image_id"] for r in results}) == [1, 2, 4, 5, 6]
    images = json.loads(sidecar_path(out, "images").read_text())["images"]
    assert [i["id"] for i in images] == [1, 2, 4, 5, 6]


def test_score_threshold_drops_low_scores(tmp_path: Path, image_dir: Path) -> None:
    out = tmp_path / "results.json"
    predict_files(FakeSegmenter(), collect_targets([image_dir]), out, score_threshold=0.5, progress=False)
    scores = [r["score"] for r in json.loads(out.read_text())]
    assert scores and min(scores) >= 0.5 and len(scores) < 12


def test_resume_after_interruption_gives_the_same_file(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    full = tmp_path / "full.json"
    predict_files(FakeSegmenter(), targets, full, progress=False, run_info={"preset": "paper"})

    out = tmp_path / "resumed.json"
    with pytest.raises(KeyboardInterrupt):
        predict_files(FakeSegmenter(fail_after=4), targets, out, progress=False, run_info={"preset": "paper"})
    assert not out.exists()
    header, records = read_partial(partial_path(out))
    assert header["run_info"] == {"preset": "paper"}
    assert [r["file_name"] for r in records] == [t.file_name for t in targets[:4]]

    second = FakeSegmenter()
    summary = predict_files(second, targets, out, resume=True, progress=False, run_info={"preset": "paper"})

    assert len(second.calls) == 2 and summary.resumed == 4 and summary.processed == 2
    assert out.read_bytes() == full.read_bytes()
    assert sidecar_path(out, "images").read_bytes() == sidecar_path(full, "images").read_bytes()
    assert partial_paths(out) == []


def test_resume_ignores_a_line_torn_by_a_kill(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    full = tmp_path / "full.json"
    predict_files(FakeSegmenter(), targets, full, progress=False)
    out = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        predict_files(FakeSegmenter(fail_after=3), targets, out, progress=False)
    with open(partial_path(out), "a") as handle:
        handle.write('{"file_name": "img03.png", "status": "o')  # killed mid-write

    second = FakeSegmenter()
    predict_files(second, targets, out, resume=True, progress=False)

    assert len(second.calls) == 3
    assert out.read_bytes() == full.read_bytes()


def test_resume_refuses_partial_results_of_other_settings(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    out = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        predict_files(FakeSegmenter(fail_after=2), targets, out, progress=False, run_info={"shots": 1})
    with pytest.raises(InvalidInputError, match="other settings"):
        predict_files(FakeSegmenter(), targets, out, resume=True, progress=False, run_info={"shots": 5})


class SettingsSegmenter(FakeSegmenter):
    """A FakeSegmenter with what a real one has: preset settings and a fingerprinted memory bank."""

    def __init__(self, bank, fail_after: int | None = None, **overrides: object) -> None:
        super().__init__(fail_after)
        self.memory = bank
        self.settings = PAPER.replace(**overrides)


def _bank(*feature_values: float):
    bank = MemoryBank(EncoderIdentity("enc", "r1", 518, 4))
    for index, value in enumerate(feature_values):
        bank.add(torch.full((4,), value), ["bright", "dark"][index % 2])
    bank.set_category_id("bright", 7)
    bank.set_category_id("dark", 9)
    return bank


def _interrupted(out: Path, targets, segmenter) -> None:
    with pytest.raises(KeyboardInterrupt):
        predict_files(segmenter, targets, out, progress=False)


def test_resume_from_python_checks_the_settings_itself(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    out = tmp_path / "out.json"
    _interrupted(out, targets, SettingsSegmenter(_bank(1.0, 2.0), fail_after=2, points_per_side=16))
    header, _ = read_partial(partial_path(out))
    assert header["run_key"]["settings"]["points_per_side"] == 16
    assert "points_batch_size" not in header["run_key"]["settings"]

    with pytest.raises(InvalidInputError, match=r"points_per_side was 16, now 32") as refused:
        predict_files(SettingsSegmenter(_bank(1.0, 2.0)), targets, out, resume=True, progress=False)
    assert "iou_threshold" not in str(refused.value)  # only what changed is named
    with pytest.raises(InvalidInputError, match="score_threshold was 0.0, now 0.5"):
        predict_files(
            SettingsSegmenter(_bank(1.0, 2.0), points_per_side=16),
            targets,
            out,
            resume=True,
            score_threshold=0.5,
            progress=False,
        )
    # A compute-only setting may change; the same bank content (here rebuilt) is the same memory.
    second = SettingsSegmenter(_bank(1.0, 2.0), points_per_side=16, points_batch_size=7)
    summary = predict_files(second, targets, out, resume=True, progress=False)
    assert summary.resumed == 2 and len(second.calls) == 4


def test_resume_from_python_refuses_another_memory_bank(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    out = tmp_path / "out.json"
    _interrupted(out, targets, SettingsSegmenter(_bank(1.0, 2.0), fail_after=2))
    with pytest.raises(InvalidInputError, match="memory bank's content differs"):
        predict_files(SettingsSegmenter(_bank(1.0, 3.0)), targets, out, resume=True, progress=False)


def test_memory_fingerprint_follows_content_not_file(tmp_path: Path) -> None:
    bank = _bank(1.0, 2.0)
    saved = MemoryBank.load(bank.save(tmp_path / "a.safetensors"))
    assert saved.fingerprint() == bank.fingerprint() == _bank(1.0, 2.0).fingerprint()
    bank.set_category_id("dark", 10)
    assert bank.fingerprint() != saved.fingerprint()


def test_without_resume_earlier_partial_results_are_dropped(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    out = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        predict_files(FakeSegmenter(fail_after=2), targets, out, progress=False)
    stale_rank_file = partial_path(out, rank=1, world_size=2)
    stale_rank_file.write_text('{"file_name": "img05.png", "image_id": 6, "status": "ok", "results": []}\n')
    second = FakeSegmenter()
    predict_files(second, targets, out, progress=False)
    assert len(second.calls) == 6
    assert {r["image_id"] for r in json.loads(out.read_text())} == set(range(1, 7))


def test_two_ranks_merge_to_the_single_process_file(tmp_path: Path, image_dir: Path) -> None:
    (image_dir / "img04.png").write_bytes(b"broken")
    targets = collect_targets([image_dir])
    single = tmp_path / "single.json"
    predict_files(FakeSegmenter(), targets, single, progress=False)

    out = tmp_path / "ranks.json"
    barrier = threading.Barrier(2, timeout=30)
    segmenters = [FakeSegmenter(), FakeSegmenter()]
    summaries: dict[int, object] = {}
    failures: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            summaries[rank] = predict_files(
                segmenters[rank], targets, out, rank=rank, world_size=2, barrier=barrier.wait, progress=False
            )
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            failures.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not failures
    assert [len(s.calls) for s in segmenters] == [2, 3]  # rank 0: img00, img02, img04 (unreadable)
    assert summaries[0].merged and not summaries[1].merged
    assert out.read_bytes() == single.read_bytes()
    for kind in ("images", "errors"):
        assert sidecar_path(out, kind).read_text() == sidecar_path(single, kind).read_text().replace(
            "single.json", "ranks.json"
        )
    assert partial_paths(out) == []


def test_resume_with_another_number_of_processes(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    single = tmp_path / "single.json"
    predict_files(FakeSegmenter(), targets, single, progress=False)
    out = tmp_path / "out.json"
    # An earlier 2-process run whose rank 1 finished while rank 0 was killed after 1 image.
    barrier_calls = []
    predict_files(
        FakeSegmenter(),
        targets,
        out,
        rank=1,
        world_size=2,
        barrier=lambda: barrier_calls.append(1),
        progress=False,
    )
    with pytest.raises(KeyboardInterrupt):
        predict_files(
            FakeSegmenter(fail_after=1),
            targets,
            out,
            rank=0,
            world_size=2,
            resume=True,
            barrier=lambda: None,
            progress=False,
        )
    assert len(partial_paths(out)) == 2

    third = FakeSegmenter()
    predict_files(third, targets, out, resume=True, progress=False)

    assert len(third.calls) == 2
    assert out.read_bytes() == single.read_bytes()


def test_duplicate_targets_are_refused(tmp_path: Path, image_dir: Path) -> None:
    target = collect_targets([image_dir])[0]
    with pytest.raises(InvalidInputError, match="unique"):
        predict_files(FakeSegmenter(), [target, target], tmp_path / "out.json", progress=False)


def test_an_empty_memory_fails_before_any_image(tmp_path: Path, image_dir: Path) -> None:
    segmenter = FakeSegmenter()
    segmenter.memory = FakeMemory(references=0)
    with pytest.raises(InvalidInputError, match="memory bank is empty"):
        predict_files(segmenter, collect_targets([image_dir]), tmp_path / "out.json", progress=False)
    assert segmenter.calls == [] and partial_paths(tmp_path / "out.json") == []


# ----------------------------------------------------------------------------- memory building


class RecordingBank:
    def __init__(self) -> None:
        self.class_names: list[str] = []
        self.category_ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.class_names)

    def set_category_id(self, name: str, category_id: int) -> None:
        self.category_ids[name] = category_id


class RecordingSegmenter:
    """Records what memory building asks for; refuses empty masks like the real one."""

    def __init__(self) -> None:
        self.memory = RecordingBank()
        self.added: list[dict] = []

    def add_reference(self, image, class_name, *, mask=None, box=None, source=None) -> int:
        if mask is not None and not np.asarray(mask).any():
            raise InvalidInputError("The reference mask is empty")
        self.added.append({"image": image, "class": class_name, "mask": mask, "box": box, "source": source})
        if class_name not in self.memory.class_names:
            self.memory.class_names.append(class_name)
        return len(self.added) - 1


def test_add_coco_references_uses_masks_boxes_and_reports_the_rest(tmp_path: Path) -> None:
    from cocodata import synthesize_coco, write_coco_dataset

    data = synthesize_coco(3, ("cat", "dog"), seed=3)
    json_path, image_dir = write_coco_dataset(data, tmp_path)
    coco = json.loads(json_path.read_text())
    objects = [a for a in coco["annotations"] if a["synthetic"] == "object"]
    box_only = objects[0]
    del box_only["segmentation"]
    (image_dir / coco["images"][-1]["file_name"]).unlink()  # a missing image
    crowds = [a for a in coco["annotations"] if a["iscrowd"]]
    missing = [
        a for a in coco["annotations"] if a["image_id"] == coco["images"][-1]["id"] and not a["iscrowd"]
    ]

    segmenter = RecordingSegmenter()
    report = add_coco_references(segmenter, coco, image_dir, progress=False)

    assert report.added == len(coco["annotations"]) - len(crowds) - len(missing)
    assert len(report.skipped) == len(crowds) + len(missing)
    assert any("crowd" in s["reason"] for s in report.skipped)
    assert any("Image not found" in s["reason"] for s in report.skipped)
    by_id = {entry["source"]["annotation_id"]: entry for entry in segmenter.added}
    x, y, w, h = box_only["bbox"]
    assert by_id[box_only["id"]]["box"] == (x, y, x + w, y + h) and by_id[box_only["id"]]["mask"] is None
    other = objects[1]
    assert np.array_equal(by_id[other["id"]]["mask"], data.masks[other["id"]])
    assert segmenter.memory.category_ids == {"cat": 17, "dog": 18}


def test_read_mask_understands_common_mask_pngs(tmp_path: Path) -> None:
    from refseg.masks import decode_mask

    truth = np.zeros((6, 8), dtype=bool)
    truth[1:4, 2:6] = True
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "white.png")
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "ones.png")
    for name in ("white.png", "ones.png"):
        assert np.array_equal(decode_mask(read_mask(tmp_path / name), truth.shape), truth), name
    indexed = Image.new("P", (8, 6))
    indexed.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
    indexed.putdata([2 if v else 0 for v in truth.reshape(-1)])  # object = palette index 2
    indexed.save(tmp_path / "palette.png")
    assert np.array_equal(read_mask(tmp_path / "palette.png"), truth)
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(InvalidInputError, match="Cannot read mask"):
        read_mask(tmp_path / "broken.png")


def test_folder_references_pairs_images_with_their_masks(tmp_path: Path) -> None:
    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    for path in ("cat/a.jpg", "cat/a.mask.png", "cat/b.png", "cat/b_mask.png", "cat/c.png", "dog/d.png",
                 "dog/d_mask.png"):  # fmt: skip
        (tmp_path / path).parent.mkdir(exist_ok=True)
        image.save(tmp_path / path)
    triples, missing = folder_references(tmp_path)
    assert [(c, i.name, m.name) for c, i, m in triples] == [
        ("cat", "a.jpg", "a.mask.png"),
        ("cat", "b.png", "b_mask.png"),
        ("dog", "d.png", "d_mask.png"),
    ]
    assert [m["source"]["file"] for m in missing] == [str(tmp_path / "cat" / "c.png")]
    with pytest.raises(InvalidInputError, match="one sub-folder per class"):
        folder_references(tmp_path / "cat")


def test_resume_refuses_partial_files_of_refseg_0_1_0(tmp_path: Path, image_dir: Path) -> None:
    targets = collect_targets([image_dir])
    out = tmp_path / "out.json"
    partial_path(out).write_text('{"refseg_partial": 1, "run_info": {"score_thr": 0.0}}\n')
    with pytest.raises(InvalidInputError, match="another refseg version"):
        predict_files(FakeSegmenter(), targets, out, resume=True, progress=False)


def test_a_second_run_on_the_same_output_stops_and_leaves_the_first_alone(tmp_path: Path, image_dir: Path):
    """Two runs on one output: the loser said 'run again with --resume', which was wrong."""
    import os
    import socket

    from refseg.errors import OutputError
    from refseg.files import lock_path

    out = tmp_path / "out" / "results.json"
    targets = collect_targets([image_dir])
    with pytest.raises(KeyboardInterrupt):
        predict_files(FakeSegmenter(fail_after=2), targets, out, progress=False)
    assert not lock_path(out).exists()  # released by the interrupted run
    before = partial_path(out).read_bytes()
    lock_path(out).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(OutputError, match=rf"Another refseg run \(pid {os.getppid()} on .*\) is writing"):
        predict_files(FakeSegmenter(), targets, out, progress=False)
    assert partial_path(out).read_bytes() == before  # the other run's partial file untouched
    lock_path(out).unlink()
    summary = predict_files(FakeSegmenter(), targets, out, resume=True, progress=False)
    assert summary.resumed == 2 and not lock_path(out).exists()
