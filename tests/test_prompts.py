"""References marked with points and boxes: checked, answered as SAM2's own predictor does, and
recorded so the mask can be made again.

The tiny SAM2's logits are ~1e-5 (any tolerance would pass), so the comparisons with
``Sam2Model`` run on a decoder with O(1) weights (``tiny_models.trained_looking_sam2``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene
from tiny_models import trained_looking_sam2

from refseg import InvalidInputError, Segmenter
from refseg.models.sam2 import Sam2Proposer
from refseg.preprocess import proposer_input
from refseg.prompts import check_prompt

HEIGHT, WIDTH = 200, 300


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A (200, 300, 3) uint8 picture of smooth blobs (not square: x and y scale differently)."""
    generator = torch.Generator().manual_seed(7)
    coarse = torch.rand((1, 3, 6, 9), generator=generator)
    smooth = F.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bilinear")[0]
    return (smooth.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def prompted(tiny_models, picture):
    """A segmenter on the O(1)-weight SAM2 (counting its image-encoder runs), and a direct
    ``Sam2Model`` call on the picture's embedding that gives the upsampled expected logits."""
    _, encoder = tiny_models
    proposer = Sam2Proposer(trained_looking_sam2(2), device="cpu")
    calls = []
    embed = proposer.embed

    def counting_embed(image):
        calls.append(1)
        return embed(image)

    proposer.embed = counting_embed
    segmenter = Segmenter(proposer, encoder, preset="fast")
    embedding = embed(proposer_input(picture, 1024)[0])
    scale = torch.tensor([1024 / WIDTH, 1024 / HEIGHT])

    def expected(points=None, labels=None, box=None) -> torch.Tensor:
        """(H, W) logits SAM2's predictor gives, upsampled to the picture."""
        prompts = {}
        if points is not None:
            points = torch.tensor(points, dtype=torch.float32) * scale
            labels = torch.ones(len(points)) if labels is None else torch.tensor(labels)
            prompts["input_points"] = points.view(1, 1, -1, 2)
            prompts["input_labels"] = labels.view(1, 1, -1).int()
        if box is not None:
            prompts["input_boxes"] = (torch.tensor(box, dtype=torch.float32) * scale.repeat(2)).view(1, 1, 4)
        multimask = points is not None and len(points) == 1 and box is None
        with torch.no_grad():
            out = proposer.model(image_embeddings=embedding.as_list(), multimask_output=multimask, **prompts)
        best = int(out.iou_scores[0, 0].argmax()) if multimask else 0
        logits = out.pred_masks[0, 0, best].float()
        assert float(logits.abs().max()) > 0.1  # O(1) logits: the comparison means something
        return F.interpolate(logits[None, None], size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)[
            0, 0
        ]

    return segmenter, calls, expected


PROMPTS = {
    "single positive point": {"points": [(120.0, 80.0)]},
    "positive and negative points": {
        "points": [(120.0, 80.0), (200.0, 150.0), (60.0, 40.0)],
        "point_labels": [1, 0, 1],
    },
    "box and points": {
        "box": (40.0, 30.0, 220.0, 170.0),
        "points": [(120.0, 80.0), (180.0, 60.0)],
        "point_labels": [1, 0],
    },
}


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_a_prompt_gives_the_mask_sam2s_predictor_gives(prompted, picture, kind) -> None:
    segmenter, _, expected = prompted
    prompt = PROMPTS[kind]
    mask = segmenter.reference_mask(picture, **prompt)
    logits = expected(prompt.get("points"), prompt.get("point_labels"), prompt.get("box"))
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool and mask.any()
    decided = logits.abs() > 1e-5  # pixels whose sign float rounding cannot flip (as test_models' atol)
    assert np.array_equal(mask[decided.numpy()], (logits > 0)[decided].numpy())
    assert (~decided).sum() < 0.001 * mask.size


def test_a_single_point_is_the_best_of_three_and_the_negative_point_counts(prompted, picture) -> None:
    segmenter, _, expected = prompted
    both = segmenter.reference_mask(picture, points=[(120, 80), (200, 150)], point_labels=[1, 0])
    positive = segmenter.reference_mask(picture, points=[(120, 80), (200, 150)])
    assert not np.array_equal(both, positive)


def test_previews_on_one_picture_run_the_image_encoder_once(prompted, picture) -> None:
    segmenter, calls, _ = prompted
    other = picture.copy()
    other[0, 0] ^= 1  # one changed pixel is another picture
    segmenter.reference_mask(other, points=[(120, 80)])
    calls.clear()
    for prompt in PROMPTS.values():  # the first preview embeds the picture, the others reuse it
        segmenter.reference_mask(picture, **prompt)
    segmenter.reference_mask(picture, box=(40, 30, 220, 170))
    ref_id = segmenter.add_reference(picture, "blob", points=[(120, 80)])
    assert len(calls) == 1
    segmenter.reference_mask(other, points=[(120, 80)])
    assert len(calls) == 2
    source = segmenter.memory.references[-1].source
    assert segmenter.memory.references[-1].ref_id == ref_id
    assert source == {"prompt": "points", "points": [[120.0, 80.0]], "point_labels": [1]}


def test_the_provenance_of_each_prompt_kind_redraws_its_mask(prompted, picture) -> None:
    segmenter, _, _ = prompted
    for kind, prompt in PROMPTS.items():
        ref_id = segmenter.add_reference(picture, "blob", source={"file": "blob.png"}, **prompt)
        source = next(r.source for r in segmenter.memory.references if r.ref_id == ref_id)
        assert source["prompt"] == {
            "single positive point": "points",
            "positive and negative points": "points",
        }.get(kind, "box+points")
        assert source["file"] == "blob.png"
        again = segmenter.reference_mask(
            picture,
            box=source.get("box"),
            points=source.get("points"),
            point_labels=source.get("point_labels"),
        )
        assert np.array_equal(again, segmenter.reference_mask(picture, **prompt))
    box_only = segmenter.add_reference(picture, "blob", box=(40, 30, 220, 170))
    assert segmenter.memory.references[-1].ref_id == box_only
    assert segmenter.memory.references[-1].source == {"prompt": "box", "box": [40.0, 30.0, 220.0, 170.0]}


BAD_PROMPTS = {
    "point outside": ({"points": [(301, 10)]}, "outside the 300x200 image"),
    "negative coordinate": ({"points": [(10, -1)]}, "outside"),
    "nan point": ({"points": [(float("nan"), 10)]}, "not a pair of finite numbers"),
    "inf point": ({"points": [(10, float("inf"))]}, "not a pair of finite numbers"),
    "label 2": ({"points": [(10, 10)], "point_labels": [2]}, "1 \\(on the object\\) or 0"),
    "label -1": ({"points": [(10, 10)], "point_labels": [-1]}, "1 \\(on the object\\) or 0"),
    "label as text": ({"points": [(10, 10)], "point_labels": ["1"]}, "point_labels must be"),
    "labels as a string": ({"points": [(10, 10)], "point_labels": "1"}, "point_labels must be"),
    "fewer labels": ({"points": [(10, 10), (20, 20)], "point_labels": [1]}, "2 point\\(s\\) but 1 label"),
    "labels without points": ({"point_labels": [1], "box": (0, 0, 50, 50)}, "without points"),
    "flat point": ({"points": (10, 20)}, "pairs"),
    "no point": ({"points": []}, "non-empty"),
    "three numbers": ({"points": [(1, 2, 3)]}, "pairs"),
    "text point": ({"points": [("a", "b")]}, "pairs of numbers"),
    "only negative points": ({"points": [(10, 10)], "point_labels": [0]}, "at least one point on the object"),
    "nan box": ({"box": (float("nan"), 0, 50, 50)}, "NaN or infinite"),
    "box outside": ({"box": (400, 300, 500, 400)}, "empty or outside"),
    "mask and points": ({"mask": np.ones((HEIGHT, WIDTH), bool), "points": [(10, 10)]}, "not both"),
    "nothing": ({}, "needs a mask, a box or points"),
}


@pytest.mark.parametrize("case", list(BAD_PROMPTS))
def test_bad_prompts_are_refused_with_a_clear_message(case) -> None:
    prompt, message = BAD_PROMPTS[case]
    segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder())
    picture = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    with pytest.raises(InvalidInputError, match=message):
        segmenter.reference_mask(picture, **prompt)
    with pytest.raises(InvalidInputError, match=message):
        segmenter.add_reference(picture, "thing", **prompt)
    assert segmenter.proposer.embed_calls == 0  # refused before SAM2 runs
    assert len(segmenter.memory) == 0


def test_check_prompt_accepts_what_sam2_takes() -> None:
    assert check_prompt(None, None, None, 10, 10) is None
    prompt = check_prompt((0, 0, 20, 5), np.array([[10, 10]]), np.array([True]), 10, 10)
    assert (
        prompt.kind == "box+points" and prompt.clipped_box == (0.0, 0.0, 10.0, 5.0) and prompt.labels == (1,)
    )
    points, labels, box = prompt.scaled(1024, 10, 10)
    assert (
        points.tolist() == [[1024.0, 1024.0]] and labels.tolist() == [1] and box.tolist() == [0, 0, 1024, 512]
    )
    corner = check_prompt(None, [(0, 0), (10, 10)], [1, 0], 10, 10)  # the picture's edges are inside
    assert corner.kind == "points" and corner.labels == (1, 0)


def test_points_on_synthetic_objects_and_negative_references() -> None:
    """End to end on the synthetic proposer: a point marks an object, a negative point on it
    leaves nothing, and a negative reference needs a positive one of its class first."""
    scene = make_scene(13, classes=("red", "blue"), per_class=1)
    segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder())
    ys, xs = np.nonzero(scene.masks[0])
    inside = [(float(xs.mean()), float(ys.mean()))]
    mask = segmenter.reference_mask(scene.image, points=inside)
    assert (mask & scene.masks[0]).sum() / (mask | scene.masks[0]).sum() > 0.9
    with pytest.raises(InvalidInputError, match="found no object"):
        segmenter.reference_mask(scene.image, points=inside + inside, point_labels=[1, 0])
    with pytest.raises(InvalidInputError, match="no positive reference of 'red' yet"):
        segmenter.add_reference(scene.image, "red", points=inside, negative=True)
    assert segmenter.proposer.embed_calls == 1  # the refused negative never ran SAM2
    segmenter.add_reference(scene.image, "red", points=inside)
    ys, xs = np.nonzero(scene.masks[1])
    other = segmenter.add_reference(
        scene.image, "red", points=[(float(xs.mean()), float(ys.mean()))], negative=True
    )
    background = segmenter.add_reference(scene.image, None, mask=scene.masks[1], negative=True)
    records = {r.ref_id: r for r in segmenter.memory.references}
    assert records[other].negative and records[other].class_name == "red"
    assert records[background].negative and records[background].class_name is None
    assert segmenter.memory.negative_counts() == {"red": 1, None: 1}
    assert segmenter.proposer.embed_calls == 1


def test_memory_show_redraws_a_points_reference_from_its_provenance(tmp_path) -> None:
    from PIL import Image

    from refseg.memory_pictures import lazy_prompt_to_mask, picture_references

    scene = make_scene(21, classes=("red", "blue"), per_class=1)
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder())
    ys, xs = np.nonzero(scene.masks[0])
    inside, other = (
        (float(xs.mean()), float(ys.mean())),
        tuple(float(v) for v in np.argwhere(scene.masks[1])[0][::-1]),
    )
    segmenter.add_reference(tmp_path / "scene.png", "red", points=[inside, other], point_labels=[1, 0])
    segmenter.add_reference(
        tmp_path / "scene.png", "red", box=(0, 0, 255, 255), points=[inside], negative=True
    )
    loads = []
    prompt_to_mask = lazy_prompt_to_mask(lambda: loads.append(1) or SyntheticProposer(), SyntheticEncoder())
    found, skipped = picture_references(segmenter.memory, prompt_to_mask=prompt_to_mask)
    assert skipped == [] and loads == [1]  # SAM2 loaded once, on first use
    expected = segmenter.reference_mask(scene.image, points=[inside])
    assert [(r.class_name, r.negative) for r in found] == [("red", False), ("red", True)]
    assert all(np.array_equal(r.mask, expected) for r in found)
