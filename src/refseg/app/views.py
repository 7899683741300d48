"""What the page shows, as plain data: canvas views, mask overlays and the message area.

A *view* is the value of a picture canvas (:mod:`refseg.app.canvas`), a plain dict the
canvas's script draws; the picture itself travels once, separately::

    {"mode": "empty" | "prompt" | "select",
     "width": W, "height": H,                  # original pixels: every coordinate below uses them
     "overlay": PNG data URL at preview size, or "",
     "points": [{"kind": "pos" | "neg", "x", "y"}], "box": {"x1", "y1", "x2", "y2"} | None,
     "labels": [{"x", "y", "text", "colour"}],  # tags at instances' top-left corners
     "legend": [{"name", "colour", "count"}],   # classes with their colours
     "seq": the last click handled (the page knows which answer it shows),
     "caption": str}

Text in a view (captions, class names) is drawn by the script as text, never as markup.
The message area is HTML made here, its text escaped, and any absolute path in it reduced to
its base name (:func:`scrub_paths`): errors raised deep down may name a server file.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..viz import boundary
from .draft import Draft, Prompt, caption, split_prompts
from .pictures import Picture, png_data_url

MessageKind = Literal["info", "error", "busy"]
PROMPT_COLOUR = (30, 144, 255)
MAX_TINTED = 120  # instances drawn in one palette overlay (two palette entries each)
_PATH = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:)?[\\/](?:[^\s\\/'\"`,;:()]+[\\/])+([^\s\\/'\"`,;:()]+)")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute file path (POSIX or Windows) reduced to its base name."""
    return _PATH.sub(r"\1", text)


def message_html(text: str, kind: MessageKind = "info") -> str:
    """The message area's HTML: one message, escaped, paths reduced to base names."""
    icon = {"info": "", "error": "&#9888; ", "busy": '<span class="spinner"></span>'}[kind]
    body = html.escape(scrub_paths(text))
    return f'<div class="msg msg-{kind}" data-kind="{kind}" role="status">{icon}{body}</div>'


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


# --------------------------------------------------------------------------- overlays


def mask_overlay(mask: np.ndarray, colour: tuple[int, int, int] = PROMPT_COLOUR) -> str:
    """A (h, w) bool mask as a palette PNG data URL: tinted inside, an opaque outline."""
    indices = mask.astype(np.uint8)
    indices[boundary(mask, 1)] = 2
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, *colour, *colour] + [0] * (253 * 3))
    image.info["transparency"] = bytes([0, 110, 255] + [0] * 253)
    return png_data_url(image)


def instances_overlay(
    masks: Sequence[np.ndarray], colours: Sequence[tuple[int, int, int]], selected: int | None = None
) -> str:
    """Instances tinted in their colours, outlined; the selected one stronger, outlined white.

    Args:
        masks: (h, w) bool masks at the preview's size; a smaller instance is drawn over a
            larger one it overlaps (so it can be seen and clicked).
        colours: one RGB colour per mask.
        selected: index of the selected mask, or None.
    """
    if not masks:
        return ""
    shape = masks[0].shape
    indices = np.zeros(shape, np.uint8)
    palette, alpha = [0, 0, 0], [0]
    order = sorted(range(min(len(masks), MAX_TINTED)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        chosen = i == selected
        indices[masks[i]] = len(alpha)
        palette += colours[i]
        alpha.append(165 if chosen else 80)
        indices[boundary(masks[i], 2 if chosen else 1)] = len(alpha)
        palette += (255, 255, 255) if chosen else colours[i]
        alpha.append(255)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.info["transparency"] = bytes(alpha + [0] * (256 - len(alpha)))
    return png_data_url(image)


# --------------------------------------------------------------------------- canvas views


def empty_view(caption_text: str = "Upload a picture to start.") -> dict[str, Any]:
    return {
        "mode": "empty",
        "width": 0,
        "height": 0,
        "overlay": "",
        "points": [],
        "box": None,
        "labels": [],
        "legend": [],
        "seq": 0,
        "caption": caption_text,
    }


def _box_view(box: Prompt | None) -> dict[str, float] | None:
    if box is None:
        return None
    return {"x1": round(box.x1, 3), "y1": round(box.y1, 3), "x2": round(box.x2, 3), "y2": round(box.y2, 3)}


def picture_view(
    picture: Picture, *, mode: str, seq: int, caption_text: str, **fields: Any
) -> dict[str, Any]:
    """A view of ``picture`` (fields not given are empty)."""
    return {**empty_view(caption_text), "mode": mode, "width": picture.width, "height": picture.height,
            "seq": int(seq), **fields}  # fmt: skip


def prompt_view(draft: Draft, mask: np.ndarray | None, seq: int, caption_text: str | None = None) -> dict:
    """The view of a draft: its points and box, and the mask (preview size) as the overlay."""
    points, box = split_prompts(draft.prompts)
    return picture_view(
        draft.picture,
        mode="prompt",
        seq=seq,
        caption_text=caption(draft.prompts) if caption_text is None else caption_text,
        overlay="" if mask is None else mask_overlay(mask),
        points=[{"kind": p.kind, "x": round(p.x1, 3), "y": round(p.y1, 3)} for p in points],
        box=_box_view(box),
    )


def mask_view(picture: Picture, mask: np.ndarray, caption_text: str) -> dict[str, Any]:
    """A picture with a given (H, W) mask over it (a mask file), nothing to click."""
    return picture_view(
        picture,
        mode="select",
        seq=0,
        caption_text=caption_text,
        overlay=mask_overlay(picture.to_preview(mask)),
    )
