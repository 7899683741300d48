"""Image tensors as the models take them: the one place resizing choices are made."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    array = image if image.flags.writeable else image.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def proposer_input(image: np.ndarray, size: int) -> torch.Tensor:
    """The SAM2 input: a square resize (no aspect kept, no padding), as SAM2's own predictor.

    Args:
        image: (H, W, 3) uint8.
        size: the proposer's square side S (1024).

    Returns:
        (1, 3, S, S) float32 in [0, 1]; bilinear, antialiased when shrinking.
    """
    resized = F.interpolate(
        image_to_tensor(image), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.clamp_(0.0, 1.0)


def encoder_input(proposer_image: torch.Tensor, size: int) -> torch.Tensor:
    """The DINOv2 input of a target: the proposer's square image resized bicubically.

    Args:
        proposer_image: (1, 3, S, S) float32 in [0, 1].
        size: the encoder input side (518).

    Returns:
        (1, 3, size, size) float32 in [0, 1].
    """
    resized = F.interpolate(
        proposer_image, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    return resized.clamp_(0.0, 1.0)
