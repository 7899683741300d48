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
from refseg.app import references_view, results_view, views
from refseg.app import session as actions
from refseg.app.session import SessionState, SharedModels
from refseg.cli.app import app_command
from refseg.errors import EncoderMismatchError, InvalidInputError
from refseg.masks import decode_mask
from refseg.models.base import EncoderIdentity
from refseg.viz import class_color


@pytest.fixture
def models() -> SharedModels:
    return SharedModels(Segmenter(SyntheticProposer(), SyntheticEncoder(), preset="fast"))


@pytest.fixture
def scene():
    return make_scene(0, classes=("red", "green", "blue"), size=(192, 192), per_class=2, radius=(12, 18))


# --------------------------------------------------------------------------- references


def _add(models, state, name, scene, index, **source):
    return actions.add_reference(models, state, name, scene.image, scene.masks[index], source=source)


def test_add_reference_keeps_how_it_was_marked_and_shows_it_in_the_list(models, scene) -> None:
    state = SessionState()
    red = _add(models, state, " red ", scene, 0, prompt="points", points=[[3.0, 4.0]], file="a.png")
    green = _add(models, state, "green", scene, 2, prompt="mask file", file="/srv/uploads/b.png")
    assert state.bank is not None and state.bank.counts() == {"red": 1, "green": 1}
    records = {r.ref_id: r for r in state.bank.references}
    assert records[red].source["prompt"] == "points" and records[red].source["points"] == [[3.0, 4.0]]
    # The stored mask is the object's: enough to picture the bank later.
    assert np.array_equal(decode_mask(records[red].source["mask"], scene.image.shape[:2]), scene.masks[0])
    rows = references_view.reference_rows(state)
    assert [(r["id"], r["class"], r["kind"], r["marked"], r["file"]) for r in rows] == [
        (red, "red", "positive", "points", "a.png"),
        (green, "green", "positive", "mask file", "b.png"),
    ]
    assert all(r["thumbnail"].startswith("data:image/jpeg;base64,") for r in rows)
    summary = references_view.memory_summary(state)
    assert "red 1" in summary and "2 reference(s)" in summary
    assert state.unsaved and references_view.references_value(state)["unsaved"]


def test_add_reference_explains_what_is_missing(models, scene) -> None:
    state = SessionState()
    with pytest.raises(InvalidInputError, match="class name"):
        _add(models, state, "  ", scene, 0)
    with pytest.raises(InvalidInputError, match="empty"):
        actions.add_reference(
            models, state, "red", scene.image, np.zeros(scene.image.shape[:2], bool), source={}
        )
    assert state.bank is None or len(state.bank) == 0
    assert references_view.memory_summary(state).startswith("Memory: empty")
    assert not state.unsaved


def test_remove_and_undo_the_last_removal(models, scene) -> None:
    state = SessionState()
    ids = [_add(models, state, name, scene, i) for i, name in enumerate(scene.classes[:4])]
    before = state.bank.reference_features.clone()
    assert actions.remove_reference(state, ids[0]) == f"reference #{ids[0]} (red)"
    assert state.bank.counts() == {"red": 1, "green": 2} and set(state.thumbnails) == set(ids[1:])
    assert actions.undo_removal(state) == f"reference #{ids[0]} (red)"
    assert [r.ref_id for r in state.bank.references] == ids and set(state.thumbnails) == set(ids)
    assert torch.equal(state.bank.reference_features, before) and state.bank.class_names == ["red", "green"]
    with pytest.raises(InvalidInputError, match="no removal to undo"):
        actions.undo_removal(state)

    actions.remove_class(state, "green")
    assert state.bank.class_names == ["red"] and set(state.thumbnails) == set(ids[:2]) == set(state.crops)
    _add(models, state, "blue", scene, 4)  # the memory changed after the removal: undo would lose it
    with pytest.raises(InvalidInputError, match="changed after class green was removed"):
        actions.undo_removal(state)
    assert state.bank.counts() == {"red": 2, "blue": 1}
    with pytest.raises(InvalidInputError, match="no class 'nope'"):
        actions.remove_class(state, "nope")
    with pytest.raises(InvalidInputError, match="no longer in memory"):
        actions.remove_reference(state, 999)
    with pytest.raises(InvalidInputError, match="Choose a class"):
        actions.remove_class(SessionState(), "red")


def test_negative_examples_of_a_class_and_of_the_background(models, scene, tmp_path) -> None:
    state = SessionState(workdir=str(tmp_path))
    red = _add(models, state, "red", scene, 0)
    not_red = actions.add_reference(
        models,
        state,
        "red",
        scene.image,
        scene.masks[2],
        source={"prompt": "result", "file": "t.png"},
        negative=True,
    )
    wall = actions.add_reference(
        models, state, None, scene.image, scene.masks[4], source={"prompt": "result"}, negative=True
    )
    with pytest.raises(InvalidInputError, match="class name"):
        _add(models, state, None, scene, 1)  # a positive needs its class
    rows = references_view.reference_rows(state)
    assert [(r["id"], r["class"], r["kind"], r["marked"]) for r in rows] == [
        (red, "red", "positive", "mask"),  # the segmenter says how, when the source does not
        (not_red, "red", "negative", "picked in a result"),
        (wall, "background", "negative", "picked in a result"),
    ]
    assert "3 reference(s), 2 of them negative in 1 class(es): red 1" in references_view.memory_summary(state)
    saved = MemoryBank.load(actions.memory_file(state))
    assert [r.negative for r in saved.references] == [False, True, True] and saved.references[
        2
    ].class_name is None
    assert (
        actions.session_memory_picture(models, state, tile_size=32).size[1] > 2 * 32
    )  # a row per class + background
    actions.remove_reference(state, wall)
    assert actions.undo_removal(state) == f"reference #{wall} (background)"
    assert [r.ref_id for r in state.bank.references] == [red, not_red, wall]


def test_the_memory_file_always_matches_the_memory(models, scene, tmp_path) -> None:
    state = SessionState(workdir=str(tmp_path))
    assert actions.memory_file(state) is None
    with pytest.raises(InvalidInputError, match="empty"):
        actions.save_memory(state)
    _add(models, state, "red", scene, 0)
    first = actions.memory_file(state)
    assert first.name == "memory.safetensors" and MemoryBank.load(first).counts() == {"red": 1}
    assert actions.memory_file(state) == first  # unchanged memory: the same file
    _add(models, state, "green", scene, 2)
    second = actions.memory_file(state)
    assert (
        second != first and not first.exists() and MemoryBank.load(second).counts() == {"red": 1, "green": 1}
    )
    assert state.unsaved
    assert actions.save_memory(state) == second and not state.unsaved
    actions.remove_reference(state, 0)
    assert state.unsaved and MemoryBank.load(actions.memory_file(state)).counts() == {"green": 1}


def test_save_and_load_memory(models, scene, tmp_path) -> None:
    state = SessionState(workdir=str(tmp_path))
    _add(models, state, "red", scene, 0)
    path = actions.save_memory(state)
    assert path.parent.parent == tmp_path and MemoryBank.load(path).counts() == {"red": 1}

    other = SessionState()
    actions.load_memory(models, other, path)
    assert other.bank.counts() == {"red": 1} and other.thumbnails == {} and not other.unsaved
    assert torch.allclose(other.bank.prototypes(), state.bank.prototypes())
    assert references_view.reference_rows(other)[0]["thumbnail"] == ""  # a memory file holds no pictures

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
    _add(models, state, "green", scene, 2)  # the app's preset: 0.2
    assert state.bank.context_ratio == 0.5 and state.bank.counts() == {"red": 1, "green": 1}
    wide = Segmenter(SyntheticProposer(), SyntheticEncoder(), preset="fast", context_ratio=0.5)
    expected = wide.memory
    wide.add_reference(scene.image, "green", mask=scene.masks[2])
    assert torch.allclose(state.bank.reference_features[1], expected.reference_features[0])


# --------------------------------------------------------------------------- runs


def test_run_finds_the_objects_and_skips_unreadable_files(models, scene, tmp_path) -> None:
    state = SessionState(workdir=str(tmp_path))
    with pytest.raises(InvalidInputError, match="memory is empty"):
        list(actions.run_targets(models, state, [tmp_path / "x.png"]))
    _add(models, state, "red", scene, 0)
    _add(models, state, "blue", scene, 4)
    with pytest.raises(InvalidInputError, match="Upload one or more"):
        list(actions.run_targets(models, state, []))

    target = make_scene(5, classes=("red", "blue"), size=(192, 192), per_class=2, radius=(12, 18))
    good = tmp_path / "target.png"
    Image.fromarray(target.image).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00not an image")
    steps = actions.run_targets(models, state, [good, bad])
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as stop:
            problems = stop.value
            break
    assert seen == [(0, 2, "target.png"), (1, 2, "broken.jpg")]
    assert problems == ["broken.jpg: not a picture this page can read"]
    assert [r.name for r in state.results] == ["target.png"]
    found = state.results[0].instances.filter(0.5)
    assert sorted(found.names) == ["blue", "blue", "red", "red"]
    assert state.results[0].preview_masks.shape == (len(state.results[0].instances), 192, 192)

    strip = results_view.result_strip(state, 0.5)
    assert (
        len(strip) == 1
        and max(strip[0][0].size) <= results_view.STRIP_SIDE
        and strip[0][1] == "1: target.png (4)"
    )
    files = results_view.result_files(state, 0.5)
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
    # Boxes in the run's preset's convention, as refseg predict writes them: fast's exclusive
    # boxes; a paper run's are one pixel narrower and shorter (inclusive x2, y2).
    assert state.result_box_convention == "exclusive"
    exclusive = found.to_coco(1, state.result_categories)
    assert sorted(r["bbox"] for r in results) == sorted(r["bbox"] for r in exclusive)
    state.result_box_convention = "inclusive"
    inclusive = json.loads(open(results_view.result_files(state, 0.5)[0]).read())
    assert sorted(r["bbox"] for r in inclusive) == sorted(
        [x, y, w - 1, h - 1] for x, y, w, h in (r["bbox"] for r in exclusive)
    )

    # The threshold only re-filters the kept results: nothing is recomputed.
    calls = models.base().encoder.calls
    assert json.loads(open(results_view.result_files(state, 1.01)[0]).read()) == []
    assert results_view.result_strip(state, 1.01)[0][1] == "1: target.png (0)"
    assert models.base().encoder.calls == calls

    # Removing a class after the run does not break the results already shown.
    actions.remove_class(state, "blue")
    assert len(json.loads(open(results_view.result_files(state, 0.5)[0]).read())) == 4


def test_the_large_result_view_and_picking_an_instance(models, scene, tmp_path) -> None:
    state = SessionState(workdir=str(tmp_path))
    _add(models, state, "red", scene, 0)
    _add(models, state, "blue", scene, 4)
    target = make_scene(5, classes=("red", "blue"), size=(192, 192), per_class=2, radius=(12, 18))
    Image.fromarray(target.image).save(tmp_path / "target.png")
    list(actions.run_targets(models, state, [tmp_path / "target.png"]))
    result = state.results[0]
    ys, xs = np.nonzero(target.masks[0])
    picked = results_view.pick_instance(result, 0.5, xs.mean() + 0.5, ys.mean() + 0.5)
    assert picked is not None and result.instances.names[picked] == "red"
    assert (result.instances.masks[picked] & target.masks[0]).sum() > 0.8 * target.masks[0].sum()
    assert results_view.pick_instance(result, 0.5, 1.5, 96.5) is None  # background
    assert results_view.pick_instance(result, 1.01, xs.mean(), ys.mean()) is None  # not shown at this score

    view = results_view.result_view(result, 0.5, picked, seq=3)
    assert (view["mode"], view["seq"], view["width"]) == ("select", 3, 192)
    assert sorted(label["text"].split()[0] for label in view["labels"]) == ["blue", "blue", "red", "red"]
    assert [label["selected"] for label in view["labels"]].count(True) == 1
    assert view["legend"] == [
        {"name": "red", "colour": views.hex_colour(class_color("red")), "count": 2},
        {"name": "blue", "colour": views.hex_colour(class_color("blue")), "count": 2},
    ]
    assert results_view.describe_instance(result, picked).startswith(f"#{picked + 1} red (score ")


def test_nothing_to_show_without_results() -> None:
    assert (
        results_view.result_strip(SessionState(), 0.3) == []
        and results_view.result_files(SessionState(), 0.3) == []
    )


def test_session_memory_picture(models, scene) -> None:
    state = SessionState()
    with pytest.raises(InvalidInputError, match="No reference pictures"):
        actions.session_memory_picture(models, state)
    for index, name in enumerate(scene.classes[:3]):
        _add(models, state, name, scene, index)
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
    actions.add_reference(shared, one, "red", scene.image, scene.masks[0], source={})
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
        "message",
        "reference-upload",
        "class-name",
        "reference-canvas",
        "undo",
        "clear",
        "accept",
        "reference-editor",
        "add-painted",
        "mask-upload",
        "mask-canvas",
        "add-masked",
        "references",
        "undo-removal",
        "download-memory",
        "memory-upload",
        "targets",
        "run",
        "threshold",
        "result-canvas",
        "not-class",
        "background",
        "missed",
        "missed-accept",
        "result-strip",
        "result-files",
    ]:
        assert wanted in ids


def test_app_command_reports_unloadable_weights_without_a_traceback(tmp_path) -> None:
    result = CliRunner().invoke(
        app_command,
        ["--sam2", str(tmp_path / "no-sam2"), "--encoder", str(tmp_path / "no-dino"), "--port", "0"],
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "no-sam2" in result.output
