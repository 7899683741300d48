"""The page's marking logic without a browser: pictures, prompts and drafts, the brush, views."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import SyntheticProposer, make_scene

from refseg.app import brush, draft, pictures, views
from refseg.app.session import SessionState
from refseg.errors import InvalidInputError
from refseg.preprocess import proposer_input


def _decode(url: str) -> Image.Image:
    header, data = url.split(",", 1)
    assert header.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture
def scene():
    return make_scene(3, classes=("red", "blue"), size=(192, 256), per_class=1, radius=(16, 22))


# --------------------------------------------------------------------------- pictures


def test_a_picture_is_read_once_and_travels_as_a_small_preview(tmp_path) -> None:
    big = np.zeros((1500, 3000, 3), np.uint8)
    big[:, 1500:] = 200
    Image.fromarray(big).save(tmp_path / "wide.png")
    picture = pictures.read_picture(tmp_path / "wide.png")
    assert (picture.name, picture.width, picture.height) == ("wide.png", 3000, 1500)
    assert picture.preview.shape == (512, 1024, 3)
    assert _decode(picture.url).size == (1024, 512)
    small = pictures.picture_from_pixels(big[:100, :150], "small.png")
    assert small.preview is small.pixels  # small enough: no copy
    assert picture.key != small.key and picture.key == pictures.read_picture(tmp_path / "wide.png").key


def test_exif_rotation_is_applied_as_any_viewer_shows_the_picture(tmp_path) -> None:
    image = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(tmp_path / "turned.jpg", exif=exif)
    assert (
        pictures.read_picture(tmp_path / "turned.jpg").width,
        pictures.read_picture(tmp_path / "turned.jpg").height,
    ) == (20, 40)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"just some text", "not a JPEG, PNG"),
        (b"\xff\xd8\xff\xe0 this is not really a JPEG" + bytes(200), "damaged or cut short"),
    ],
)
def test_unreadable_uploads_are_one_message_naming_the_file_only(tmp_path, content, says) -> None:
    path = tmp_path / "deep" / "server" / "folder" / "upload.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    for check in (pictures.read_picture, pictures.check_picture):
        with pytest.raises(InvalidInputError) as caught:
            check(path)
        assert str(caught.value).startswith("Could not read upload.jpg:") and says in str(caught.value)
        assert str(tmp_path) not in str(caught.value)


def test_a_truncated_picture_is_called_damaged(tmp_path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:300])
    with pytest.raises(InvalidInputError, match="Could not read cut.png: the file is damaged or cut short"):
        pictures.read_picture(tmp_path / "cut.png")


def test_a_mask_file_must_fit_its_picture(tmp_path, scene) -> None:
    picture = pictures.picture_from_pixels(scene.image, "scene.png")
    Image.fromarray(scene.masks[0].astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert np.array_equal(pictures.read_mask_file(tmp_path / "m.png", picture), scene.masks[0])
    Image.fromarray(scene.masks[0].astype(np.uint8)).save(tmp_path / "ones.png")  # 0/1 masks count too
    assert np.array_equal(pictures.read_mask_file(tmp_path / "ones.png", picture), scene.masks[0])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(
        InvalidInputError, match=r"The mask small.png is 10x10 but the picture scene.png is 256x192"
    ):
        pictures.read_mask_file(tmp_path / "small.png", picture)
    Image.fromarray(np.zeros((192, 256), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(InvalidInputError, match="empty"):
        pictures.read_mask_file(tmp_path / "empty.png", picture)
    (tmp_path / "notes.txt").write_text("no")
    with pytest.raises(InvalidInputError, match="Could not read the mask notes.txt"):
        pictures.read_mask_file(tmp_path / "notes.txt", picture)


def test_sam2_input_is_the_segmenters_for_ordinary_pictures_and_cheap_for_huge_ones() -> None:
    rng = np.random.default_rng(0)
    ordinary = rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)
    assert torch.equal(pictures.sam2_input(ordinary, 512), proposer_input(ordinary, 512))  # 600 < 2 x 512
    coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    huge = np.asarray(coarse.resize((800, 600), Image.Resampling.BICUBIC))  # smooth, 600x800
    reduced = pictures.sam2_input(huge, 128)  # shorter side 600 >= 2 x 128: box-reduced by 4 first
    assert reduced.shape == (1, 3, 128, 128)
    assert (reduced - proposer_input(huge, 128)).abs().max() < 0.02


def test_resize_mask_takes_pixel_centres() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    assert np.array_equal(pictures.resize_mask(mask, (8, 8)), np.kron(mask, np.ones((2, 2), bool)))
    assert pictures.resize_mask(mask, (4, 4)) is mask


# --------------------------------------------------------------------------- prompts and drafts


def test_event_data_becomes_prompts_in_original_pixels() -> None:
    assert draft.prompt_from_event({"kind": "pos", "x": 0.25, "y": 0.5}, 8000, 6000) == draft.Prompt(
        "pos", 2000, 3000
    )
    assert draft.prompt_from_event({"kind": "neg", "x": -1, "y": 2}, 100, 50) == draft.Prompt("neg", 0, 50)
    box = draft.prompt_from_event({"kind": "box", "x1": 0.5, "y1": 0.6, "x2": 0.1, "y2": 0.2}, 100, 100)
    assert box == draft.Prompt("box", 10, 20, 50, 60)
    for bad in [None, "x", {"kind": "pos", "x": "1", "y": 0}, {"kind": "pos", "x": float("nan"), "y": 0},
                {"kind": "pos", "x": True, "y": 0}, {"kind": "lasso", "x": 0, "y": 0}]:  # fmt: skip
        with pytest.raises(InvalidInputError, match="reload the page"):
            draft.prompt_from_event(bad, 10, 10)
    with pytest.raises(InvalidInputError, match="box is empty"):
        draft.prompt_from_event({"kind": "box", "x1": 0.5, "y1": 0.5, "x2": 0.505, "y2": 0.9}, 100, 100)
    with pytest.raises(InvalidInputError, match="reload the page"):
        draft.prompt_from_event({"kind": "box", "x1": 0, "y1": 0, "x2": 1, "y2": 1}, 10, 10, allow_box=False)


def test_prompts_in_the_segmenters_convention_and_in_the_memory_file() -> None:
    prompts = [draft.Prompt("pos", 10.5, 20.5), draft.Prompt("box", 1, 2, 30, 40), draft.Prompt("neg", 3.5, 4.5),
               draft.Prompt("box", 5, 6, 70, 80), draft.Prompt("neg", 0.2, 99.9)]  # fmt: skip
    points, labels, box = draft.prompt_arrays(prompts, 100, 100)
    assert points.tolist() == [[10.0, 20.0], [3.0, 4.0], [0.0, pytest.approx(99.4)]]  # kept inside
    assert labels.tolist() == [1, 0, 0] and box.tolist() == [5, 6, 70, 80]  # the last box counts
    assert draft.describe_prompts(prompts, 100, 100) == {
        "prompt": "box+points",
        "box": [5.0, 6.0, 70.0, 80.0],
        "points": [[10.0, 20.0], [3.0, 4.0], [0.0, pytest.approx(99.4)]],
        "point_labels": [1, 0, 0],
    }
    assert draft.describe_prompts([draft.Prompt("box", 1, 2, 3, 4)], 10, 10)["prompt"] == "box"
    assert draft.describe_prompts([], 10, 10) == {} and draft.prompt_arrays([], 10, 10) == (None, None, None)
    with pytest.raises(InvalidInputError, match="Every point is labelled 0"):
        draft.reference_prompt([draft.Prompt("neg", 5, 5)], 10, 10)
    assert draft.caption(prompts) == "1 point(s) on the object, 2 point(s) not on it, a box"


@pytest.mark.parametrize(
    "prompts",
    [
        [draft.Prompt("pos", 70.5, 40.5)],
        [draft.Prompt("pos", 70.5, 40.5), draft.Prompt("neg", 20.5, 100.5)],
        [draft.Prompt("box", 40, 20, 110, 90)],
        [
            draft.Prompt("box", 40, 20, 110, 90),
            draft.Prompt("pos", 70.5, 40.5),
            draft.Prompt("neg", 90.5, 80.5),
        ],
    ],
    ids=["point", "points", "box", "box-and-points"],
)
def test_a_drafts_mask_is_the_segmenters_for_the_same_prompts(tiny_models, prompts) -> None:
    """What the page previews and accepts is what Segmenter.reference_mask makes (tiny SAM2)."""
    from refseg import Segmenter

    proposer, encoder = tiny_models
    rng = np.random.default_rng(1)
    coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((160, 120), Image.Resampling.BICUBIC))
    marking = draft.start_draft(proposer, pictures.picture_from_pixels(pixels, "p.png"))
    for prompt in prompts:
        marking.add(prompt)
    points, labels, box = draft.prompt_arrays(prompts, 160, 120)
    expected = Segmenter(proposer, encoder).reference_mask(
        pixels,
        points=None if points is None else points.tolist(),
        point_labels=None if labels is None else labels.tolist(),
        box=None if box is None else box.tolist(),
    )
    assert np.array_equal(draft.draft_mask(proposer, marking), expected)


def test_a_draft_embeds_once_and_previews_each_prompt(scene) -> None:
    proposer = SyntheticProposer()
    picture = pictures.picture_from_pixels(scene.image, "scene.png")
    marking = draft.start_draft(proposer, picture)
    assert proposer.embed_calls == 1 and draft.draft_mask(proposer, marking) is None
    red, blue = scene.masks
    ys, xs = np.nonzero(red)
    marking.add(draft.Prompt("pos", xs.mean() + 0.5, ys.mean() + 0.5))
    assert _iou(draft.draft_mask(proposer, marking), red) > 0.85
    assert draft.draft_mask(proposer, marking, (96, 128)).shape == (96, 128)  # preview size
    marking.add(draft.Prompt("neg", xs.mean() + 0.5, ys.mean() + 0.5))  # not this one after all
    assert not draft.draft_mask(proposer, marking).any()
    assert marking.undo() and _iou(draft.draft_mask(proposer, marking), red) > 0.85
    bys, bxs = np.nonzero(blue)
    marking.clear()
    marking.add(draft.Prompt("box", bxs.min(), bys.min(), bxs.max() + 1, bys.max() + 1))
    assert _iou(draft.draft_mask(proposer, marking), blue) > 0.85
    assert proposer.embed_calls == 1  # every preview decoded against the one embedding
    assert not marking.taken
    marking.accepted = marking.version
    assert marking.taken
    marking.add(draft.Prompt("pos", 1, 1))
    assert not marking.taken  # a new prompt makes a new draft
    marking.clear()
    assert not marking.undo()  # nothing left to undo


# --------------------------------------------------------------------------- brush


def test_painted_strokes_are_read_at_the_originals_size() -> None:
    layer = np.zeros((40, 50, 4), np.uint8)
    layer[10:20, 5:15] = (255, 51, 102, 255)
    mask = brush.painted_mask({"background": None, "layers": [layer], "composite": None}, (80, 100))
    assert mask.shape == (80, 100) and mask.sum() == 400 and mask[20:40, 10:30].all()
    assert brush.painted_mask({"layers": [np.zeros_like(layer)]}, (80, 100)) is None
    assert brush.painted_mask(None, (80, 100)) is None


def test_only_strokes_painted_since_the_last_reference_count() -> None:
    state = SessionState()
    first = np.zeros((30, 30), dtype=bool)
    first[2:8, 2:8] = True
    assert brush.fresh_strokes(state, "a", None) is None
    assert np.array_equal(brush.fresh_strokes(state, "a", first), first)
    brush.remember_strokes(state, "a", first)
    assert brush.fresh_strokes(state, "a", first) is None  # the first object's strokes are still there
    both = first.copy()
    both[20:25, 20:25] = True
    fresh = brush.fresh_strokes(state, "a", both)
    assert fresh is not None and fresh.sum() == 25 and fresh[20:25, 20:25].all()
    assert np.array_equal(brush.fresh_strokes(state, "b", first), first)  # another picture: all count


# --------------------------------------------------------------------------- views


def test_messages_are_escaped_and_name_no_server_path() -> None:
    text = views.message_html("Could not read /tmp/gradio/3f2a/upload name.png <b>x</b>", "error")
    assert "/tmp" not in text and "gradio" not in text and "&lt;b&gt;" in text and 'data-kind="error"' in text
    assert views.scrub_paths("C:\\Users\\me\\AppData\\x.png and /var/tmp/y/z.json.") == "x.png and z.json."
    assert views.scrub_paths("a class/name, 1/2 and ./rel/path") == "a class/name, 1/2 and ./rel/path"


def test_overlays_are_transparent_outside_the_mask() -> None:
    mask = np.zeros((30, 40), bool)
    mask[5:15, 10:30] = True
    rgba = np.asarray(_decode(views.mask_overlay(mask)).convert("RGBA"))
    assert rgba.shape == (30, 40, 4) and (rgba[~mask][:, 3] == 0).all() and (rgba[mask][:, 3] > 0).all()
    inner = np.zeros_like(mask)
    inner[8:14, 14:24] = True
    url = views.instances_overlay([mask, inner], [(255, 0, 0), (0, 0, 255)], selected=1)
    over = np.asarray(_decode(url).convert("RGBA"))
    assert tuple(over[11, 19, :3]) == (0, 0, 255)  # the smaller instance is drawn on top
    assert tuple(over[8, 15, :3]) == (255, 255, 255)  # the selected one is outlined white
    assert views.instances_overlay([], []) == ""


def test_a_prompt_view_draws_points_and_the_box_where_they_are(scene) -> None:
    marking = draft.Draft(pictures.picture_from_pixels(scene.image, "scene.png"), embedding=None)
    marking.add(draft.Prompt("pos", 10.25, 20.5))
    marking.add(draft.Prompt("box", 1, 2, 30, 40))
    view = views.prompt_view(marking, np.ones((192, 256), bool), seq=7)
    assert (view["mode"], view["width"], view["height"], view["seq"]) == ("prompt", 256, 192, 7)
    assert view["points"] == [{"kind": "pos", "x": 10.25, "y": 20.5}]
    assert view["box"] == {"x1": 1, "y1": 2, "x2": 30, "y2": 40}
    assert view["overlay"].startswith("data:image/png;base64,") and view["caption"].endswith("a box")
