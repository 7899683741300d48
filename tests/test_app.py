"""The web app's actions (no browser): references, memory files, runs, results, and the page."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene

from refseg import MemoryBank, Segmenter
from refseg.app import session as actions
from refseg.app.session import SessionState, SharedModels
from refseg.cli.app import app_command
from refseg.errors import EncoderMismatchError, InvalidInputError
from refseg.masks import decode_mask
from refseg.models.base import EncoderIdentity


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.fixture
def models() -> SharedModels:
    return SharedModels(Segmenter(SyntheticProposer(), SyntheticEncoder(), preset="fast"))


@pytest.fixture
def scene():
    return make_scene(0, classes=("red", "green", "blue"), size=(192, 192), per_class=2, radius=(12, 18))


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10, 20, 30, 40", [10, 20, 30, 40]),
        ("[10.5 20 30 40.25]", [10.5, 20, 30, 40.25]),
        ("(1;2;3;4)", [1, 2, 3, 4]),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_box_reads_four_numbers(text, expected) -> None:
    assert actions.parse_box(text) == expected


@pytest.mark.parametrize(
    "text", ["10, 20, 30", "1, 2, 3, 4, 5", "a, b, c, d", "x1=1 2 3 4", "30, 20, 10, 40"]
)
def test_parse_box_rejects_what_is_not_a_box(text) -> None:
    with pytest.raises(InvalidInputError, match="box"):
        actions.parse_box(text)


def test_editor_value_gives_the_image_and_the_painted_strokes() -> None:
    background = np.zeros((40, 50, 4), dtype=np.uint8)
    background[..., 0] = 200
    background[..., 3] = 255
    layer = np.zeros((40, 50, 4), dtype=np.uint8)
    layer[10:20, 5:15] = (255, 51, 102, 255)
    image, mask = actions.editor_image_and_mask(
        {"background": background, "layers": [layer], "composite": background}
    )
    assert image.shape == (40, 50, 3) and (image[..., 0] == 200).all()
    assert mask is not None and mask.sum() == 100 and mask[10:20, 5:15].all()
    # Nothing painted: no mask. A stroke layer of another size is resized onto the image.
    assert (
        actions.editor_image_and_mask({"background": background, "layers": [np.zeros_like(layer)]})[1] is None
    )
    small = np.zeros((20, 25, 4), dtype=np.uint8)
    small[5:10, 0:5, 3] = 255
    _, resized = actions.editor_image_and_mask({"background": background, "layers": [small]})
    assert resized is not None and resized[10:20, 0:10].all() and resized.sum() == 100
    with pytest.raises(InvalidInputError, match="Upload a reference image"):
        actions.editor_image_and_mask({"background": None, "layers": [], "composite": None})


def test_only_strokes_painted_since_the_last_reference_count() -> None:
    state = SessionState()
    image = np.zeros((30, 30, 3), dtype=np.uint8)
    first = np.zeros((30, 30), dtype=bool)
    first[2:8, 2:8] = True
    assert actions.fresh_strokes(state, image, None) is None
    assert np.array_equal(actions.fresh_strokes(state, image, first), first)
    actions.remember_strokes(state, image, first)
    # The first object's strokes are still on the canvas: nothing new painted yet.
    assert actions.fresh_strokes(state, image, first) is None
    both = first.copy()
    both[20:25, 20:25] = True
    fresh = actions.fresh_strokes(state, image, both)
    assert fresh is not None and fresh.sum() == 25 and fresh[20:25, 20:25].all()
    # Another picture: all its strokes count.
    other = image + 1
    assert np.array_equal(actions.fresh_strokes(state, other, first), first)


# --------------------------------------------------------------------------- references


def test_add_reference_by_box_and_by_mask(models, scene) -> None:
    state = SessionState()
    red = actions.add_reference(
        models, state, " red ", scene.image, box=_box(scene.masks[0]), file_name="a.png"
    )
    green = actions.add_reference(models, state, "green", scene.image, mask=scene.masks[2])
    assert state.bank is not None and state.bank.counts() == {"red": 1, "green": 1}
    records = {r.ref_id: r for r in state.bank.references}
    assert records[red].source["prompt"] == "box" and records[red].source["file"] == "a.png"
    assert records[red].source["box"] == _box(scene.masks[0])
    assert records[green].source["prompt"] == "mask"
    # The stored mask is the instance mask (SAM2's from the box): enough to picture the bank later.
    assert np.array_equal(decode_mask(records[red].source["mask"], scene.image.shape[:2]), scene.masks[0])
    assert [caption for _, caption in actions.reference_gallery(state)] == [f"red #{red}", f"green #{green}"]
    assert actions.reference_rows(state) == [[red, "red", "box", "a.png"], [green, "green", "mask", ""]]
    assert "**red** 1" in actions.memory_summary(state) and "2 reference(s)" in actions.memory_summary(state)


def test_add_reference_explains_what_is_missing(models, scene) -> None:
    state = SessionState()
    with pytest.raises(InvalidInputError, match="class name"):
        actions.add_reference(models, state, "  ", scene.image, mask=scene.masks[0])
    with pytest.raises(InvalidInputError, match="paint over it"):
        actions.add_reference(models, state, "red", scene.image)
    with pytest.raises(InvalidInputError, match="empty"):
        actions.add_reference(models, state, "red", scene.image, mask=np.zeros(scene.image.shape[:2], bool))
    assert state.bank is None or len(state.bank) == 0
    assert actions.memory_summary(state).startswith("Memory: empty")


def test_remove_reference_and_class_keep_views_in_step(models, scene) -> None:
    state = SessionState()
    ids = [
        actions.add_reference(models, state, name, scene.image, mask=mask)
        for mask, name in zip(scene.masks[:4], scene.classes[:4], strict=True)
    ]
    actions.remove_reference(state, ids[0])
    assert state.bank.counts() == {"red": 1, "green": 2} and set(state.thumbnails) == set(ids[1:])
    actions.remove_class(state, "green")
    assert state.bank.class_names == ["red"] and set(state.thumbnails) == {ids[1]} == set(state.crops)
    with pytest.raises(InvalidInputError):
        actions.remove_class(state, "nope")
    with pytest.raises(InvalidInputError):
        actions.remove_reference(state, 999)
    with pytest.raises(InvalidInputError, match="Choose a class"):
        actions.remove_class(SessionState(), "red")


def test_save_and_load_memory(models, scene, tmp_path) -> None:
    state = SessionState(workdir=str(tmp_path))
    with pytest.raises(InvalidInputError, match="empty"):
        actions.save_memory(state)
    actions.add_reference(models, state, "red", scene.image, mask=scene.masks[0])
    path = actions.save_memory(state)
    assert path.parent == tmp_path and MemoryBank.load(path).counts() == {"red": 1}

    other = SessionState()
    actions.load_memory(models, other, path)
    assert other.bank.counts() == {"red": 1} and other.thumbnails == {}
    assert torch.allclose(other.bank.prototypes(), state.bank.prototypes())

    foreign = MemoryBank(EncoderIdentity("some-other-encoder", "1", 518, 7))
    foreign.add(torch.ones(7), "cat")
    with pytest.raises(EncoderMismatchError):
        actions.load_memory(models, other, foreign.save(tmp_path / "foreign.safetensors"))
    assert other.bank.counts() == {"red": 1}  # unchanged after a refused file
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a memory file")
    with pytest.raises(InvalidInputError):
        actions.load_memory(models, other, junk)


def test_a_loaded_bank_keeps_its_context_ratio_in_the_page(models, scene, tmp_path) -> None:
    made = Segmenter(SyntheticProposer(), SyntheticEncoder(), preset="fast", context_ratio=0.5)
    made.add_reference(scene.image, "red", mask=scene.masks[0])
    state = SessionState()
    actions.load_memory(models, state, made.memory.save(tmp_path / "wide.safetensors"))
    actions.add_reference(models, state, "green", scene.image, mask=scene.masks[2])  # the app's preset: 0.2
    assert state.bank.context_ratio == 0.5 and state.bank.counts() == {"red": 1, "green": 1}
    wide = Segmenter(SyntheticProposer(), SyntheticEncoder(), preset="fast", context_ratio=0.5)
    expected = wide.memory
    wide.add_reference(scene.image, "green", mask=scene.masks[2])
    assert torch.allclose(state.bank.reference_features[1], expected.reference_features[0])


# --------------------------------------------------------------------------- runs


def test_run_finds_the_objects_and_skips_unreadable_files(models, scene, tmp_path) -> None:
    state = SessionState(workdir=str(tmp_path))
    with pytest.raises(InvalidInputError, match="memory is empty"):
        actions.run_targets(models, state, [tmp_path / "x.png"])
    actions.add_reference(models, state, "red", scene.image, mask=scene.masks[0])
    actions.add_reference(models, state, "blue", scene.image, mask=scene.masks[4])
    with pytest.raises(InvalidInputError, match="Upload one or more"):
        actions.run_targets(models, state, [])

    target = make_scene(5, classes=("red", "blue"), size=(192, 192), per_class=2, radius=(12, 18))
    good = tmp_path / "target.png"
    Image.fromarray(target.image).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00not an image")
    seen = []
    problems = actions.run_targets(
        models, state, [good, bad], progress=lambda d, t, n: seen.append((d, t, n))
    )
    assert seen == [(0, 2, "target.png"), (1, 2, "broken.jpg")]
    assert len(problems) == 1 and problems[0].startswith("broken.jpg")
    assert [r.name for r in state.results] == ["target.png"]
    found = state.results[0].instances.filter(0.5)
    assert sorted(found.names) == ["blue", "blue", "red", "red"]

    gallery, files = actions.render_results(state, 0.5)
    assert len(gallery) == 1 and gallery[0][0].size == (192, 192) and "4 instances" in gallery[0][1]
    results = json.loads(open(files[0]).read())
    images = json.loads(open(files[1]).read())
    assert len(results) == 4 and {r["image_id"] for r in results} == {1}
    assert {r["category_id"] for r in results} == {
        state.bank.category_ids["red"],
        state.bank.category_ids["blue"],
    }
    assert all(set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"} for r in results)
    assert images["images"] == [{"id": 1, "file_name": "target.png", "height": 192, "width": 192}]
    assert [c["name"] for c in images["categories"]] == ["red", "blue"]

    # The slider only re-filters the kept results: nothing is recomputed.
    calls = models.base().encoder.calls
    gallery_all, files_all = actions.render_results(state, 1.01)
    assert models.base().encoder.calls == calls
    assert "0 instances" in gallery_all[0][1] and json.loads(open(files_all[0]).read()) == []
    assert np.array_equal(np.asarray(gallery_all[0][0]), target.image)

    # Removing a class after the run does not break the results already shown.
    actions.remove_class(state, "blue")
    _, files_after = actions.render_results(state, 0.5)
    assert len(json.loads(open(files_after[0]).read())) == 4


def test_render_without_results_offers_nothing() -> None:
    assert actions.render_results(SessionState(), 0.3) == ([], [])


def test_session_memory_picture(models, scene) -> None:
    state = SessionState()
    with pytest.raises(InvalidInputError, match="No reference pictures"):
        actions.session_memory_picture(models, state)
    for mask, name in zip(scene.masks[:3], scene.classes[:3], strict=True):
        actions.add_reference(models, state, name, scene.image, mask=mask)
    picture = actions.session_memory_picture(models, state, tile_size=40)
    assert picture.size == (140 + 6 + 2 * (2 * 40 + 6), 6 + 2 * (40 + 6))


def test_shared_models_are_made_once_for_all_sessions() -> None:
    made = []
    lock = threading.Lock()

    def factory() -> Segmenter:
        with lock:
            made.append(1)
        return Segmenter(SyntheticProposer(), SyntheticEncoder(), preset="fast")

    shared = SharedModels(factory)
    assert made == []  # nothing loads before first use
    threads = [threading.Thread(target=shared.base) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == [1]
    one, two = SessionState(), SessionState()
    scene = make_scene(1, classes=("red",), size=(128, 128), per_class=1)
    actions.add_reference(shared, one, "red", scene.image, mask=scene.masks[0])
    assert two.bank is None  # sessions do not share memory
    assert shared.segmenter_for(one.bank).encoder is shared.segmenter_for(None).encoder


# --------------------------------------------------------------------------- page and command


def test_build_app_makes_a_page_with_the_controls() -> None:
    gr = pytest.importorskip("gradio")
    from refseg.app import build_app

    bank = MemoryBank(SyntheticEncoder().identity)
    demo = build_app(lambda: Segmenter(SyntheticProposer(), SyntheticEncoder()), memory=bank)
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    for wanted in [
        "class-name",
        "reference-editor",
        "reference-box",
        "add-reference",
        "targets",
        "run",
        "threshold",
        "overlays",
        "result-files",
        "save-memory",
        "memory-file",
        "memory-upload",
    ]:
        assert wanted in ids


def test_app_command_reports_unloadable_weights_without_a_traceback(tmp_path) -> None:
    result = CliRunner().invoke(
        app_command,
        ["--sam2", str(tmp_path / "no-sam2"), "--encoder", str(tmp_path / "no-dino"), "--port", "0"],
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "no-sam2" in result.output
