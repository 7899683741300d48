"""Marking one object on a picture: prompts, SAM2's live mask, and what Accept hands over.

A :class:`Draft` is the object being marked: the picture, its SAM2 embedding (computed once,
when the picture arrives), and the prompts so far (positive and negative points, at most one
box: a new box replaces the last one, and Undo brings it back). Each prompt change asks SAM2's
mask decoder again against the kept embedding (:meth:`refseg.models.base.Proposer.decode_prompts`,
as SAM2's own predictor answers a prompt) and only the low-resolution logits are brought to the
size needed: the preview's for the overlay, the original's once, at Accept.

Coordinates: the page sends fractions of the shown picture; :func:`prompt_from_event` maps
them to *continuous* original pixels (pixel i spans [i, i+1), x = fraction * W), whatever the
preview's size. :func:`reference_prompt` gives them as ``Segmenter.add_reference(points=...,
box=...)`` takes them (:mod:`refseg.prompts`: checked, scaled to SAM2's input and described for
the memory file the same way), with points as pixel positions as SAM2's predictor takes them
(the pixel under the click, i, at i), a box by its pixel edges. So the mask a draft makes is
the one ``Segmenter.reference_mask`` makes for the same prompts (for a picture whose shorter
side is under twice SAM2's input; a larger one is embedded from a box-reduced copy, see
:func:`refseg.app.pictures.sam2_input`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .. import dedup
from ..errors import InvalidInputError
from ..models.base import Proposer
from ..prompts import ReferencePrompt, check_prompt
from .pictures import Picture, sam2_input

PromptKind = Literal["pos", "neg", "box"]
_BAD_EVENT = "The click did not reach the server in a form it understands; reload the page."


@dataclass(frozen=True)
class Prompt:
    """One prompt in continuous original pixels: a point (x1, y1) or a box (x1, y1, x2, y2)."""

    kind: PromptKind
    x1: float
    y1: float
    x2: float = 0.0
    y2: float = 0.0


def prompt_from_event(data: Any, width: int, height: int, *, allow_box: bool = True) -> Prompt:
    """A prompt from the page's event data: ``{kind: "pos"|"neg", x, y}`` or
    ``{kind: "box", x1, y1, x2, y2}``, each coordinate a fraction of the shown picture.

    Fractions are clamped to [0, 1]; a box is put in order.

    Raises:
        InvalidInputError: malformed data (a page out of step), or a box under one pixel.
    """
    if not isinstance(data, dict):
        raise InvalidInputError(_BAD_EVENT)

    def fraction(key: str) -> float:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidInputError(_BAD_EVENT)
        return min(1.0, max(0.0, float(value)))

    kind = data.get("kind")
    if kind in ("pos", "neg"):
        return Prompt(kind, fraction("x") * width, fraction("y") * height)
    if kind == "box" and allow_box:
        x1, x2 = sorted((fraction("x1") * width, fraction("x2") * width))
        y1, y2 = sorted((fraction("y1") * height, fraction("y2") * height))
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise InvalidInputError("The box is empty: drag across the object.")
        return Prompt("box", x1, y1, x2, y2)
    raise InvalidInputError(_BAD_EVENT)


def split_prompts(prompts: list[Prompt]) -> tuple[list[Prompt], Prompt | None]:
    """(every point, the last box or None)."""
    boxes = [p for p in prompts if p.kind == "box"]
    return [p for p in prompts if p.kind != "box"], (boxes[-1] if boxes else None)


def prompt_arrays(
    prompts: list[Prompt], width: int, height: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The prompts as the segmenter and SAM2's predictor take them, in original pixels.

    Returns:
        points: (P, 2) float32 pixel positions (x - 0.5, y - 0.5 of the click, kept inside the
            picture), or None.
        point_labels: (P,) int64, 1 object / 0 not the object, or None.
        box: (4,) float32 x1, y1, x2, y2 pixel edges, or None.
    """
    points, box = split_prompts(prompts)
    xy = np.array(
        [[min(max(p.x1 - 0.5, 0.0), width), min(max(p.y1 - 0.5, 0.0), height)] for p in points],
        dtype=np.float32,
    ).reshape(-1, 2)
    labels = np.array([1 if p.kind == "pos" else 0 for p in points], dtype=np.int64)
    box_array = None if box is None else np.array([box.x1, box.y1, box.x2, box.y2], dtype=np.float32)
    return (xy, labels, box_array) if points else (None, None, box_array)


def reference_prompt(prompts: list[Prompt], width: int, height: int) -> ReferencePrompt | None:
    """The prompts checked as the segmenter checks them (None: no prompt yet).

    Raises:
        InvalidInputError: what SAM2 cannot take (e.g. only points off the object, no box).
    """
    points, labels, box = prompt_arrays(prompts, width, height)
    return check_prompt(
        None if box is None else box.tolist(),
        None if points is None else points.tolist(),
        None if labels is None else labels.tolist(),
        height,
        width,
    )


def describe_prompts(prompts: list[Prompt], width: int, height: int) -> dict[str, Any]:
    """How an object was marked, for the reference's source in the memory file (as the
    segmenter records it)."""
    prompt = reference_prompt(prompts, width, height)
    return {} if prompt is None else prompt.to_source()


def caption(prompts: list[Prompt]) -> str:
    """What is marked, in words (the canvas caption)."""
    if not prompts:
        return "Click the object, or drag a box around it."
    points, box = split_prompts(prompts)
    positive = sum(p.kind == "pos" for p in points)
    parts = [f"{positive} point(s) on the object"] if positive else []
    if len(points) - positive:
        parts.append(f"{len(points) - positive} point(s) not on it")
    if box is not None:
        parts.append("a box")
    return ", ".join(parts)


@dataclass(eq=False)
class Draft:
    """The object being marked on one picture.

    Attributes:
        picture: the picture.
        embedding: SAM2's embedding of it (from :meth:`Proposer.embed`), made once.
        prompts: the prompts so far, in order (Undo removes the last).
        version: changes with every change of the prompts; Accept records the version it took,
            so a repeated Accept of the same draft does nothing.
        accepted: the version last accepted (-1: none).
    """

    picture: Picture
    embedding: Any
    prompts: list[Prompt] = field(default_factory=list)
    version: int = 0
    accepted: int = -1

    def add(self, prompt: Prompt) -> None:
        self.prompts.append(prompt)
        self.version += 1

    def undo(self) -> bool:
        """Remove the last prompt; False when there was none."""
        if not self.prompts:
            return False
        self.prompts.pop()
        self.version += 1
        return True

    def clear(self) -> None:
        self.prompts = []
        self.version += 1

    @property
    def taken(self) -> bool:
        """Accept already took this very draft (a second click, or one sent twice)."""
        return self.accepted == self.version


def start_draft(proposer: Proposer, picture: Picture) -> Draft:
    """Embed ``picture`` with SAM2 (the one image-encoder run) and start marking on it."""
    with torch.inference_mode():
        embedding = proposer.embed(sam2_input(picture.pixels, proposer.image_size)[0])
    return Draft(picture=picture, embedding=embedding)


def draft_logits(proposer: Proposer, draft: Draft) -> torch.Tensor | None:
    """SAM2's (256, 256) low-resolution logits of the draft's prompts (None: no prompt), as
    ``Segmenter.reference_mask`` asks SAM2 (a box alone by the box path).

    Raises:
        InvalidInputError: prompts SAM2 cannot take (:func:`reference_prompt`).
    """
    picture = draft.picture
    prompt = reference_prompt(draft.prompts, picture.width, picture.height)
    if prompt is None:
        return None
    points, labels, box = prompt.scaled(proposer.image_size, picture.height, picture.width)
    with torch.inference_mode():
        if points is None:
            return proposer.decode_boxes(draft.embedding, box[None])[0]
        return proposer.decode_prompts(draft.embedding, points, labels, box)[0]


def draft_mask(proposer: Proposer, draft: Draft, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """The draft's mask at ``shape`` (h, w): default the original's (H, W). None: no prompt."""
    logits = draft_logits(proposer, draft)
    if logits is None:
        return None
    shape = shape or (draft.picture.height, draft.picture.width)
    return dedup.upsample_masks(logits.float()[None], shape, antialias=False)[
        0
    ].numpy()  # as SAM2's predictor
