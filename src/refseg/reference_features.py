"""One reference's feature (docs/method.md 2.2-2.6): the context crop around its box,
resized to the encoder input, encoded, and the patch features averaged with the soft mask.

The memory bank (:mod:`refseg.memory`) stores these features; the memory picture
(:mod:`refseg.viz`) redoes the same crop to show what the encoder saw.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInputError
from .masks import mask_box_exclusive
from .models.base import Encoder
from .preprocess import image_to_tensor
from .presets import SETTING_CHOICES

logger = logging.getLogger(__name__)


#: The reference-crop conventions (:attr:`refseg.presets.Preset.reference_crop`).
CROP_CONVENTIONS = SETTING_CHOICES["reference_crop"]


def context_crop_box(
    box: Sequence[float],
    image_hw: tuple[int, int],
    context_ratio: float = 0.2,
    convention: str = "refseg",
) -> tuple[int, int, int, int]:
    """The reference crop: a square centred on the box, clipped to the image.

    Side = (1 + context_ratio) x max(box width, box height), centred on the box's middle,
    then clipped to the image: at a border the crop is not square.

    Args:
        box: (x1, y1, x2, y2) in original pixels.
        image_hw: (height, width) of the image.
        convention: ``"refseg"``: ``floor`` of the low edges, ``ceil`` of the high edges (the
            box always lies inside); ``"research"``: every edge through ``int()``
            (truncation towards 0), as the research code.

    Returns:
        (x0, y0, x1, y1) integer crop bounds, exclusive x1, y1.
    """
    if convention not in CROP_CONVENTIONS:
        raise ValueError(f"convention must be one of {CROP_CONVENTIONS}, not {convention!r}")
    height, width = image_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    side = (1.0 + context_ratio) * max(x2 - x1, y2 - y1)
    low, high = (math.floor, math.ceil) if convention == "refseg" else (int, int)
    x0 = max(0, low(cx - side * 0.5))
    y0 = max(0, low(cy - side * 0.5))
    xe = min(width, high(cx + side * 0.5))
    ye = min(height, high(cy + side * 0.5))
    if xe <= x0 or ye <= y0:
        raise InvalidInputError(f"The reference box {list(box)} lies outside the {width}x{height} image.")
    return x0, y0, xe, ye


def crop_centre_box(
    mask: np.ndarray, box: Sequence[float] | None = None, convention: str = "refseg"
) -> tuple[float, float, float, float]:
    """The box a reference crop is centred on.

    ``"refseg"``: the mask's tight box (exclusive x2, y2), whatever box was given.
    ``"research"``: the given (annotated) box with each of x1, y1, x2, y2 through ``int()``,
    as the research code takes a COCO ``bbox``; the mask's tight box when none is given (or
    the given one has neither width nor height).

    Args:
        mask: (H, W) bool instance mask.
        box: (x1, y1, x2, y2) the reference's annotated box, or None.
    """
    if convention == "research" and box is not None:
        x1, y1, x2, y2 = (int(float(v)) for v in box)
        if x2 > x1 or y2 > y1:  # a box without extent (the research code's crop would be empty)
            return float(x1), float(y1), float(x2), float(y2)
    return tuple(float(v) for v in mask_box_exclusive(mask))  # type: ignore[return-value]


def reference_crop_box(
    mask: np.ndarray,
    context_ratio: float = 0.2,
    box: Sequence[float] | None = None,
    convention: str = "refseg",
) -> tuple[int, int, int, int]:
    """The crop bounds (x0, y0, x1, y1) of one reference: :func:`context_crop_box` around
    :func:`crop_centre_box`, on the mask's (H, W). What the bank encodes and the pictures show."""
    centre = crop_centre_box(mask, box, convention)
    return context_crop_box(centre, mask.shape[:2], context_ratio, convention)


def reference_inputs(
    image: np.ndarray,
    mask: np.ndarray,
    input_size: int,
    context_ratio: float = 0.2,
    *,
    box: Sequence[float] | None = None,
    convention: str = "refseg",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder input and soft mask of one reference (docs/method.md 2.2-2.4).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool instance mask.
        input_size: encoder input side S.
        box: the reference's annotated box (x1, y1, x2, y2), or None: the crop is centred on
            it under the ``"research"`` convention (:func:`crop_centre_box`).
        convention: ``"refseg"`` (crop around the mask's tight box, floor / ceil edges, the
            bicubic crop clamped to [0, 1]) or ``"research"`` (``int()`` edges, no clamp).

    Returns:
        crop: (3, S, S) float32, bicubic resize of the context crop (in [0, 1] under
            ``"refseg"``; bicubic overshoot kept under ``"research"``).
        soft_mask: (S, S) float32 in [0, 1], bilinear resize of the cropped mask.
    """
    if mask.shape != image.shape[:2]:
        raise InvalidInputError(f"Mask shape {mask.shape} does not match image shape {image.shape[:2]}.")
    x0, y0, x1, y1 = reference_crop_box(mask, context_ratio, box, convention)
    crop = image_to_tensor(image[y0:y1, x0:x1])
    crop = F.interpolate(crop, size=(input_size, input_size), mode="bicubic", align_corners=False)
    crop_mask = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1])).float()[None, None]
    soft_mask = F.interpolate(crop_mask, size=(input_size, input_size), mode="bilinear", align_corners=False)
    if convention == "refseg":
        crop = crop.clamp_(0.0, 1.0)
    return crop[0], soft_mask[0, 0]


def pool_reference(features: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean of patch features (docs/method.md 2.6, and 8.4 for tiny objects).

    Weights are the soft mask sampled to the patch grid by nearest neighbour. If no patch
    gets weight (an object smaller than a patch), the features are upsampled bilinearly to
    the mask's resolution and pooled there instead: a documented departure that only applies
    where the paper's formula would divide by zero.

    Args:
        features: (C, h, w) patch features.
        soft_mask: (S, S) soft mask in [0, 1].

    Returns:
        (C,) reference feature (not normalised).
    """
    channels, h, w = features.shape
    weights = F.interpolate(soft_mask[None, None], size=(h, w), mode="nearest")[0, 0]
    total = weights.sum()
    if total <= 0:
        total = soft_mask.sum()
        if total <= 0:
            raise InvalidInputError("The reference mask vanished after cropping and resizing.")
        logger.info("reference smaller than one patch: pooled at %dx%d instead", *soft_mask.shape)
        dense = F.interpolate(features[None], size=soft_mask.shape, mode="bilinear", align_corners=False)[0]
        return (dense * soft_mask).sum(dim=(1, 2)) / total
    return (features * weights).sum(dim=(1, 2)) / total


def reference_feature(
    encoder: Encoder,
    image: np.ndarray,
    mask: np.ndarray,
    context_ratio: float = 0.2,
    *,
    box: Sequence[float] | None = None,
    convention: str = "refseg",
) -> torch.Tensor:
    """One reference's feature (docs/method.md 2.2-2.6).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool.
        box, convention: as :func:`reference_inputs`.

    Returns:
        (C,) float32 feature, not normalised.
    """
    crop, soft_mask = reference_inputs(
        image, mask, encoder.identity.input_size, context_ratio, box=box, convention=convention
    )
    with torch.inference_mode():
        features = encoder.encode(crop[None])[0].float().cpu()
    return pool_reference(features, soft_mask)
