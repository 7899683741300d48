"""What both model wrappers do to their inputs: ImageNet normalisation and the autocast context."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (..., 3, H, W) float images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def autocast_context(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, disabled for float32."""
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)
