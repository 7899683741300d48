"""Image tensors as the models take them: the one place resizing choices are made.

Two conventions each (:class:`refseg.presets.Preset`, docs/fidelity.md): the research code's
(``paper``) and refseg's own, better-posed resampling (antialiased, on floats).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    array = image if image.flags.writeable else image.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def proposer_input(image: np.ndarray, size: int, resize: str = "torch") -> torch.Tensor:
    """The SAM2 input: a square resize (no aspect kept, no padding).

    Args:
        image: (H, W, 3) uint8.
        size: the proposer's square side S (1024).
        resize: ``"torch"``: bilinear, antialiased when shrinking, on floats, as SAM2's own
            predictor; ``"pil"``: Pillow's bicubic resize of the uint8 image (antialiased when
            shrinking), rounded to uint8, then / 255 in float64, as the research code's loader
            (``paper``). The resample filter is named, so a change of Pillow's default cannot
            move it.

    Returns:
        (1, 3, S, S) float32 in [0, 1].
    """
    if resize == "pil":
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BICUBIC))
        return torch.from_numpy(resized / 255.0).permute(2, 0, 1)[None].to(torch.float32).contiguous()
    if resize != "torch":
        raise ValueError(f"resize must be 'pil' or 'torch', not {resize!r}")
    resized = F.interpolate(
        image_to_tensor(image), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.clamp_(0.0, 1.0)


def encoder_input(proposer_image: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """The DINOv2 input of a target: the proposer's square image resized bicubically.

    Args:
        proposer_image: (1, 3, S, S) float32 in [0, 1].
        size: the encoder input side (518).
        antialias: antialiased and clamped to [0, 1] (refseg's choice: a 1024 -> 518 shrink
            without antialiasing aliases); False: plain bicubic, unclamped, as the research
            code (``paper``).

    Returns:
        (1, 3, size, size) float32; in [0, 1] with ``antialias``, else slightly beyond at
        edges (bicubic overshoot).
    """
    resized = F.interpolate(
        proposer_image, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias
    )
    return resized.clamp_(0.0, 1.0) if antialias else resized
