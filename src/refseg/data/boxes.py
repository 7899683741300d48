"""Instance masks for box-only data sets (PASCAL VOC, CD-FSOD), made by prompting SAM2 with boxes.

docs/method.md 9.4: the paper made the masks of its box-only benchmarks, for references and
targets alike, by prompting SAM with the ground-truth boxes. The paper used SAM ViT-H (SAM 1);
refseg uses the configured SAM2 proposer instead (``Proposer.decode_boxes``), so masks, and
segm numbers measured against them, differ slightly from the paper's.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ..dedup import upsample_masks
from ..errors import InvalidInputError
from ..masks import box_to_mask, mask_to_rle
from ..models.base import Proposer
from ..preprocess import proposer_input
from .coco import annotations_by_image, check_coco, has_segmentation, iter_images

logger = logging.getLogger(__name__)

BOXES_PER_CALL = 64


def boxes_to_input_space(boxes_xywh: np.ndarray, height: int, width: int, size: int) -> torch.Tensor:
    """COCO boxes in image pixels -> xyxy boxes in the proposer's S x S input space.

    Args:
        boxes_xywh: (K, 4) x, y, w, h in original pixels.
        height, width: the original image size.
        size: S.

    Returns:
        (K, 4) float32 xyxy in S-space.
    """
    boxes = torch.as_tensor(np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4))
    xyxy = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
    scale = torch.tensor([size / width, size / height, size / width, size / height], dtype=torch.float32)
    return xyxy * scale


def logits_to_masks(low_res_logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Low-resolution mask logits -> binary masks at the image size.

    Args:
        low_res_logits: (K, h, w) float logits (256 x 256 for SAM2).

    Returns:
        (K, H, W) bool: bilinear upsampling (align_corners=False), then logits > 0.
    """
    if low_res_logits.shape[0] == 0:
        return np.zeros((0, height, width), dtype=bool)
    return upsample_masks(
        low_res_logits.float().cpu(), (height, width), antialias=False
    ).numpy()  # as SAM2's predictor


def boxes_to_masks(
    coco: Mapping,
    image_dir: str | os.PathLike,
    proposer: Proposer,
    *,
    image_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
) -> dict:
    """Give every box-only annotation a mask made by SAM2 from its box.

    Per image: the image is resized to the proposer's square input and embedded once
    (``proposer.embed``), the annotations' boxes are scaled to that space and decoded against
    that embedding (``proposer.decode_boxes``, :data:`BOXES_PER_CALL` at a time); the
    low-resolution logits are upsampled to the image size and thresholded at 0. The mask is stored as a
    compressed RLE ``segmentation`` with its ``area``; the ground-truth ``bbox`` is kept. An
    empty mask (SAM2 found nothing in the box) falls back to the filled box. Each changed
    annotation gets ``"mask_source"``: ``"sam2"`` or ``"box"``.

    The paper used SAM ViT-H (SAM 1) for this step; refseg uses the configured SAM2.

    Args:
        coco: a COCO dict (not modified).
        image_dir: the folder the images' ``file_name`` are relative to.
        proposer: anything with ``image_size``, ``embed`` and ``decode_boxes`` (a SAM2 proposer).
        image_size: the proposer's input side; default ``proposer.image_size``.
        overwrite: also replace existing segmentations (default: only box-only annotations).
        progress: show a progress bar.
        on_skip: called with ``file (image N): reason`` for each skipped image (default: a
            logged warning): each skip is reported once.

    Returns:
        A new COCO dict. Unreadable images (and images of another size than the json says)
        are left unchanged (their annotations stay box-only), reported (``on_skip``) and
        listed in ``info["boxes_to_masks"]["skipped_images"]`` as ``{"id", "file_name", "error"}``.

    Raises:
        InvalidInputError: a malformed COCO dict (:func:`~refseg.data.coco.check_coco`), no
            annotation with a box or a mask, every image with boxes was skipped (no mask
            made), or the proposer returns the wrong number of masks.
    """
    result = check_coco(copy.deepcopy(dict(coco)), source="the COCO data")
    size = int(image_size or proposer.image_size)
    by_image = annotations_by_image(result)
    todo = {
        image_id
        for image_id, annotations in by_image.items()
        if any((overwrite or not has_segmentation(a)) and "bbox" in a for a in annotations)
    }
    if not todo and not any(has_segmentation(a) for a in result["annotations"]):
        raise InvalidInputError(
            "No mask to make: no annotation has a bbox (and none has a segmentation already)."
        )
    images = {"images": [image for image in result["images"] if int(image["id"]) in todo]}
    errors: list[tuple[dict, str]] = []
    counts = {"sam2": 0, "box": 0}
    bar = tqdm(total=len(images["images"]), desc="box -> mask", unit="img", disable=not progress)
    for info, image in iter_images(images, image_dir, errors=errors, skip_other_sizes=True):
        bar.update(1)
        height, width = int(info["height"]), int(info["width"])
        targets = [
            a for a in by_image[int(info["id"])] if (overwrite or not has_segmentation(a)) and "bbox" in a
        ]
        masks = _masks_for_boxes(proposer, image, [a["bbox"] for a in targets], size)
        for annotation, mask in zip(targets, masks, strict=True):
            source = "sam2"
            if not mask.any():
                mask, source = box_to_mask(annotation["bbox"], height, width), "box"
                logger.info("annotation %s: empty SAM2 mask, used its box", annotation.get("id"))
            annotation["segmentation"] = mask_to_rle(mask)
            annotation["area"] = float(mask.sum())
            annotation["mask_source"] = source
            counts[source] += 1
    bar.update(len(images["images"]) - bar.n)
    bar.close()
    for info, message in errors:
        line = f"{info.get('file_name')} (image {info.get('id')}): {message}"
        if on_skip is None:
            logger.warning("boxes_to_masks: skipped %s", line)
        else:
            on_skip(line)
    if todo and not counts["sam2"] + counts["box"]:
        shown = "; ".join(f"{info.get('file_name')}: {message}" for info, message in errors[:3])
        if not errors:
            shown = "their image ids are not in the json's images"
        raise InvalidInputError(
            f"No mask made: all {len(todo)} image(s) with boxes were skipped ({shown}"
            + ("; ..." if len(errors) > 3 else "")
            + "). Check --images: the json's file_name entries are relative to it."
        )
    logger.info(
        "boxes_to_masks: %d masks from SAM2, %d box fallbacks, %d images skipped",
        counts["sam2"],
        counts["box"],
        len(errors),
    )
    info = dict(result.get("info") or {})
    info["boxes_to_masks"] = {
        "image_size": size,
        "masks": counts,
        "skipped_images": [
            {"id": i.get("id"), "file_name": i.get("file_name"), "error": message} for i, message in errors
        ],
    }
    result["info"] = info
    return result


def _masks_for_boxes(proposer: Proposer, image: np.ndarray, boxes_xywh: list, size: int) -> np.ndarray:
    """(K, H, W) bool masks of K COCO boxes on one (H, W, 3) uint8 image."""
    height, width = image.shape[:2]
    pixels = proposer_input(image, size)[0]
    boxes = boxes_to_input_space(np.asarray(boxes_xywh, dtype=np.float32), height, width, size)
    chunks = []
    with torch.inference_mode():
        embedding = proposer.embed(pixels) if len(boxes) else None  # once per image, every chunk
        for start in range(0, len(boxes), BOXES_PER_CALL):
            chunk = boxes[start : start + BOXES_PER_CALL]
            logits = proposer.decode_boxes(embedding, chunk)
            if logits.ndim != 3 or logits.shape[0] != len(chunk):
                raise InvalidInputError(
                    f"The proposer returned masks of shape {tuple(logits.shape)} for {len(chunk)} boxes; "
                    "expected (K, h, w) low-resolution logits."
                )
            chunks.append(logits_to_masks(logits, height, width))
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, height, width), dtype=bool)
