"""One reference's feature (METHOD.md section 1, steps 1-6): the context crop around its box,
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

logger = logging.getLogger(__name__)


def context_crop_box(
    box: Sequence[float], image_hw: tuple[int, int], context_ratio: float = 0.2
) -> tuple[int, int, int, int]:
    """The reference crop: a square centred on the box, clipped to the image.

    Side = (1 + context_ratio) x max(box width, box height). Bounds are truncated to integers
    (``floor`` of the low edge, ``ceil`` of the high edge, so the box always lies inside), then
    clipped to the image: at a border the crop is not square.

    Args:
        box: (x1, y1, x2, y2) in original pixels.
        image_hw: (height, width) of the image.

    Returns:
        (x0, y0, x1, y1) integer crop bounds, exclusive x1, y1.
    """
    height, width = image_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = (1.0 + context_ratio) * max(x2 - x1, y2 - y1)
    half = side / 2.0
    x0 = max(0, math.floor(cx - half))
    y0 = max(0, math.floor(cy - half))
    xe = min(width, math.ceil(cx + half))
    ye = min(height, math.ceil(cy + half))
    if xe <= x0 or ye <= y0:
        raise InvalidInputError(f"The reference box {list(box)} lies outside the {width}x{height} image.")
    return x0, y0, xe, ye


def reference_inputs(
    image: np.ndarray, mask: np.ndarray, input_size: int, context_ratio: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder input and soft mask of one reference (METHOD.md 1.1-1.3).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool instance mask.
        input_size: encoder input side S.

    Returns:
        crop: (3, S, S) float32 in [0, 1], bicubic resize of the context crop.
        soft_mask: (S, S) float32 in [0, 1], bilinear resize of the cropped mask.
    """
    if mask.shape != image.shape[:2]:
        raise InvalidInputError(f"Mask shape {mask.shape} does not match image shape {image.shape[:2]}.")
    x0, y0, x1, y1 = context_crop_box(mask_box_exclusive(mask), image.shape[:2], context_ratio)
    crop = image_to_tensor(image[y0:y1, x0:x1])
    crop = F.interpolate(crop, size=(input_size, input_size), mode="bicubic", align_corners=False)
    crop_mask = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1])).float()[None, None]
    soft_mask = F.interpolate(crop_mask, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return crop[0].clamp_(0.0, 1.0), soft_mask[0, 0]


def pool_reference(features: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean of patch features (METHOD.md 1.5-1.6).

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
    encoder: Encoder, image: np.ndarray, mask: np.ndarray, context_ratio: float = 0.2
) -> torch.Tensor:
    """One reference's feature (METHOD.md section 1, steps 1-6).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool.

    Returns:
        (C,) float32 feature, not normalised.
    """
    crop, soft_mask = reference_inputs(image, mask, encoder.identity.input_size, context_ratio)
    with torch.inference_mode():
        features = encoder.encode(crop[None])[0].float().cpu()
    return pool_reference(features, soft_mask)
