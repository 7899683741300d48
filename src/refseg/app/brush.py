"""Painting a mask with the brush (gradio's image editor), for people who prefer it to clicks.

The editor shows the preview of the uploaded picture (the page sends it; the editor never
decodes an upload itself). What is painted is read back as a mask of the preview and brought
to the original's size. Strokes stay on the editor after a reference is added, so only those
painted since then mark the next object (:func:`fresh_strokes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .pictures import resize_mask

if TYPE_CHECKING:  # pragma: no cover
    from .session import SessionState


def painted_mask(value: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """The union of the strokes of an image-editor value, at ``shape``.

    Args:
        value: ``{"background": ..., "layers": [(h, w, 4), ...], "composite": ...}`` as gradio's
            ImageEditor gives it (numpy), or None.
        shape: (H, W) of the original picture.

    Returns:
        (H, W) bool, True where any layer has alpha > 0 (nearest pixel); None if nothing is painted.
    """
    layers = value.get("layers") if isinstance(value, dict) else None
    mask: np.ndarray | None = None
    for layer in layers or []:
        layer = None if layer is None else np.asarray(layer)
        if layer is None or layer.ndim != 3 or layer.shape[2] != 4:
            continue
        painted = resize_mask(layer[..., 3] > 0, shape)
        mask = painted if mask is None else mask | painted
    return mask if mask is not None and mask.any() else None


def fresh_strokes(state: SessionState, key: str, painted: np.ndarray | None) -> np.ndarray | None:
    """The strokes painted since the last brush reference on this same picture.

    Args:
        key: the picture's fingerprint (:attr:`refseg.app.pictures.Picture.key`).
        painted: (H, W) bool everything painted on it, or None.

    Returns:
        (H, W) bool new strokes, or None when nothing new was painted.
    """
    if painted is None:
        return None
    if state.strokes is None or state.strokes[0] != key or state.strokes[1].shape != painted.shape:
        return painted
    fresh = painted & ~state.strokes[1]
    return fresh if fresh.any() else None


def remember_strokes(state: SessionState, key: str, painted: np.ndarray | None) -> None:
    """Record what is painted on the picture ``key`` once a reference was added from it."""
    if painted is not None:
        state.strokes = (key, painted.copy())
