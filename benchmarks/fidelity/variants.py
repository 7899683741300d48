"""Measurement-only switches: run refseg's dump with one research-code convention swapped in.

Each name below patches ONE of refseg's functions in this process (nothing in src/ changes),
so the harness can say how much each known difference moves proposals, instances and AP.
They describe what the research code (no-time-to-train, commit 214fc79) computes, in our words:

- ``pil_resize``: the 1024 x 1024 SAM2 input is Pillow's default ``Image.resize`` (bicubic,
  antialiased) of the uint8 image, kept as uint8, then / 255 (refseg: torch bilinear with
  antialias on floats).
- ``dino_plain``: the 518 DINOv2 input of a target is a plain bicubic resize of the 1024
  image (no antialias, no clamp).
- ``no_mem_off``: the image embedding WITHOUT SAM2's no-memory embedding (the research code
  takes the FPN features straight from ``forward_image``; SAM2's own image predictor and
  transformers' ``get_image_embeddings`` add ``no_mem_embed``).
- ``ref_crop``: the reference crop is centred on the annotation's ``bbox`` truncated to
  integers (x1, y1, x1 + w, y1 + h each through ``int``), its edges truncated with ``int``
  rather than floor/ceil, and the bicubic crop is not clamped to [0, 1].
- ``grid_order``: prompts in the research code's order (x slowest) instead of x fastest.
- ``mask_aa``: the full-size masks are upsampled with ``antialias=True`` (differs from
  refseg only where an image side is under 256 px, where it is a downsampling).
- ``boxes_inclusive``: output boxes with inclusive x2, y2 (x2 = last column of the mask).

``research`` = all of them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

NAMES = ("pil_resize", "dino_plain", "no_mem_off", "ref_crop", "grid_order", "mask_aa", "boxes_inclusive")
STATE: dict = {"annotation": None, "active": set()}


def _proposer_input_pil(image: np.ndarray, size: int) -> torch.Tensor:
    resized = np.asarray(Image.fromarray(image).resize((size, size)))
    return torch.from_numpy(resized / 255.0).permute(2, 0, 1)[None].to(torch.float32)


def _encoder_input_plain(proposer_image: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(proposer_image, size=(size, size), mode="bicubic", align_corners=False)


def _research_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = STATE["annotation"]["bbox"]
    return int(x), int(y), int(x + w), int(y + h)


def _research_crop(box, image_hw, context_ratio=0.2):
    height, width = image_hw
    x1, y1, x2, y2 = box
    mid_x, mid_y = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    side = max(x2 - x1, y2 - y1) * (1.0 + context_ratio)
    return (max(0, int(mid_x - side * 0.5)), max(0, int(mid_y - side * 0.5)),
            min(width, int(mid_x + side * 0.5)), min(height, int(mid_y + side * 0.5)))  # fmt: skip


def _reference_inputs_unclamped(image, mask, input_size, context_ratio=0.2):
    from refseg import memory
    from refseg.preprocess import image_to_tensor

    x0, y0, x1, y1 = memory.context_crop_box(memory.mask_box(mask), image.shape[:2], context_ratio)
    crop = image_to_tensor(image[y0:y1, x0:x1])
    crop = F.interpolate(crop, size=(input_size, input_size), mode="bicubic", align_corners=False)
    crop_mask = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1])).float()[None, None]
    soft = F.interpolate(crop_mask, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return crop[0], soft[0, 0]


def _grid_research(points_per_side: int, image_size: int = 1024) -> torch.Tensor:
    axis = torch.linspace(0, image_size - 1, points_per_side, dtype=torch.float32) + 0.5
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def _upsampled_chunks_aa(low_res_logits: torch.Tensor, size: tuple[int, int]):
    from refseg import matching

    height, width = size
    step = max(1, matching._UPSAMPLE_CHUNK_ELEMENTS // max(1, height * width))
    for start in range(0, low_res_logits.shape[0], step):
        logits = low_res_logits[start : start + step, None].float()
        up = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        yield start, up[:, 0] > 0


def apply(names: set[str], dump_globals: dict, proposer=None) -> None:
    """Patch refseg (and the dump script's imported names) for the chosen conventions."""
    from refseg import matching, memory, preprocess, segmenter

    if "research" in names:
        names = set(NAMES)
    unknown = names - set(NAMES)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {NAMES} or 'research'")
    STATE["active"] = names
    if "pil_resize" in names:
        preprocess.proposer_input = segmenter.proposer_input = dump_globals["proposer_input"] = (
            _proposer_input_pil
        )
    if "dino_plain" in names:
        preprocess.encoder_input = segmenter.encoder_input = dump_globals["encoder_input"] = (
            _encoder_input_plain
        )
    if "no_mem_off" in names and proposer is not None:
        with torch.no_grad():
            proposer.model.no_memory_embedding.zero_()
    if "ref_crop" in names:
        memory.mask_box = _research_box
        memory.context_crop_box = dump_globals["context_crop_box"] = _research_crop
        dump_globals["mask_box"] = _research_box
        memory.reference_inputs = dump_globals["reference_inputs"] = _reference_inputs_unclamped
    if "grid_order" in names:
        matching.point_grid = _grid_research
    if "mask_aa" in names:
        matching._upsampled_chunks = _upsampled_chunks_aa
