"""A SAM2 image embedding and the stock decoders that answer prompts against it.

The image encoder runs once per image (:meth:`refseg.models.sam2.Sam2Proposer.embed`); every
prompt is then decoded against the :class:`Sam2ImageEmbedding` it returned. The decoders here
call ``Sam2Model.forward`` with the embedding, as transformers ships it: they are the
reference the fast decoder (:mod:`refseg.models.sam2.fast_decoder`) is checked against, and
the path for box prompts and for the prompts of one object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Sam2Model

from ..base import Proposals


@dataclass
class Sam2ImageEmbedding:
    """SAM2 image features of one image, computed once and shared by every prompt.

    Attributes:
        image_embeddings: (1, C, 64, 64) lowest-resolution FPN features, no-memory
            embedding added (C = 256 for the released models).
        feat_s0: (1, C/8, 256, 256) highest-resolution features, already through the
            mask decoder's ``conv_s0``.
        feat_s1: (1, C/4, 128, 128) middle features, already through ``conv_s1``.
    """

    image_embeddings: torch.Tensor
    feat_s0: torch.Tensor
    feat_s1: torch.Tensor

    def as_list(self) -> list[torch.Tensor]:
        """The ``image_embeddings`` list ``Sam2Model.forward`` expects (high to low resolution)."""
        return [self.feat_s0, self.feat_s1, self.image_embeddings]

    @property
    def mask_size(self) -> int:
        """Side of the low-resolution masks decoded against this embedding (256)."""
        return 4 * int(self.image_embeddings.shape[-1])


def empty_proposals(mask_size: int) -> Proposals:
    return Proposals(
        low_res_logits=torch.zeros((0, mask_size, mask_size), dtype=torch.float32),
        predicted_iou=torch.zeros((0,), dtype=torch.float32),
        points=torch.zeros((0, 2), dtype=torch.float32),
    )


def select_best_of_three(
    mask_logits: torch.Tensor, iou_scores: torch.Tensor, iou_threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt, the multimask output with the highest predicted IoU, then the threshold.

    Args:
        mask_logits: (n, 3, h, w) multimask logits of n prompts.
        iou_scores: (n, 3) their predicted IoU.
        iou_threshold: a prompt survives when its best predicted IoU is > this.

    Returns:
        keep: (n,) bool, the surviving prompts.
        best_logits: (k, h, w) the chosen logits of the k survivors, prompt order.
        best_iou: (k,) their predicted IoU.
    """
    best_iou, best_index = iou_scores.max(dim=1)
    keep = best_iou > iou_threshold
    kept_rows = keep.nonzero().squeeze(1)
    best_logits = mask_logits[kept_rows, best_index[kept_rows]]
    return keep, best_logits, best_iou[kept_rows]


@torch.inference_mode()
def decode_points_stock(
    model: Sam2Model,
    embedding: Sam2ImageEmbedding,
    points: torch.Tensor,
    *,
    batch_size: int,
    iou_threshold: float,
) -> Proposals:
    """Decode single positive point prompts with ``Sam2Model.forward`` (the reference path).

    Args:
        model: the SAM2 model (its device is where the work happens).
        embedding: the image's features from :meth:`Sam2Proposer.embed`.
        points: (P, 2) float (x, y) in the model's input pixels, as handed to the prompt
            encoder (which adds its own half-pixel shift).
        batch_size: prompts per decoder call.
        iou_threshold: keep a prompt when its best predicted IoU is > this.

    Returns:
        Proposals of the surviving prompts in prompt order, float32 on the CPU.
    """
    device = embedding.image_embeddings.device
    logits_parts, iou_parts, point_parts = [], [], []
    for start in range(0, points.shape[0], batch_size):
        chunk = points[start : start + batch_size].to(device=device, dtype=torch.float32)
        n = chunk.shape[0]
        outputs = model(
            image_embeddings=embedding.as_list(),
            input_points=chunk.view(1, n, 1, 2),
            input_labels=torch.ones((1, n, 1), dtype=torch.int32, device=device),
            multimask_output=True,
        )
        keep, best_logits, best_iou = select_best_of_three(
            outputs.pred_masks[0], outputs.iou_scores[0], iou_threshold
        )
        logits_parts.append(best_logits.float().cpu())
        iou_parts.append(best_iou.float().cpu())
        point_parts.append(chunk[keep].float().cpu())
    if not logits_parts:
        return empty_proposals(embedding.mask_size)
    return Proposals(torch.cat(logits_parts), torch.cat(iou_parts), torch.cat(point_parts))


@torch.inference_mode()
def decode_boxes_stock(
    model: Sam2Model, embedding: Sam2ImageEmbedding, boxes: torch.Tensor, *, batch_size: int
) -> torch.Tensor:
    """One object per box prompt, single-mask output, with ``Sam2Model.forward``.

    Args:
        boxes: (K, 4) float xyxy in the model's input pixels.
        batch_size: boxes per decoder call.

    Returns:
        (K, 256, 256) float32 low-resolution mask logits on the CPU.
    """
    device = embedding.image_embeddings.device
    parts = []
    for start in range(0, boxes.shape[0], batch_size):
        chunk = boxes[start : start + batch_size].to(device, torch.float32)
        outputs = model(image_embeddings=embedding.as_list(), input_boxes=chunk[None], multimask_output=False)
        parts.append(outputs.pred_masks[0, :, 0].float().cpu())
    if not parts:
        size = embedding.mask_size
        return torch.zeros((0, size, size), dtype=torch.float32)
    return torch.cat(parts)


@torch.inference_mode()
def decode_prompts_stock(
    model: Sam2Model,
    embedding: Sam2ImageEmbedding,
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    box: torch.Tensor | None,
) -> tuple[torch.Tensor, float]:
    """One object from any mix of positive/negative points and at most one box.

    As SAM2's own image predictor is used for one object: a single point without a box is
    ambiguous (the object, a part, or a larger whole), so the three multimask outputs are
    decoded and the one with the highest predicted IoU is kept; any other prompt asks for
    the single-mask output. ``Sam2Model.forward`` embeds the box's two corners after the
    points (SAM2's predictor puts them first); the mask decoder's attention does not depend
    on the order of the prompt tokens, so both give the same mask (the tests check it).

    Args:
        points: (P, 2) float (x, y) in the model's input pixels, or None.
        labels: (P,) 1 (object) or 0 (not the object), with ``points``.
        box: (4,) float xyxy in the model's input pixels, or None.

    Returns:
        (256, 256) float32 low-resolution logits on the CPU, and their predicted IoU.
    """
    device = embedding.image_embeddings.device
    prompts: dict[str, torch.Tensor] = {}
    if points is not None:
        prompts["input_points"] = points.to(device, torch.float32).view(1, 1, -1, 2)
        prompts["input_labels"] = labels.to(device, torch.int32).view(1, 1, -1)
    if box is not None:
        prompts["input_boxes"] = box.to(device, torch.float32).view(1, 1, 4)
    multimask = box is None and points is not None and points.shape[0] == 1
    outputs = model(image_embeddings=embedding.as_list(), multimask_output=multimask, **prompts)
    logits, iou = outputs.pred_masks[0, 0], outputs.iou_scores[0, 0]  # (m, h, w), (m,)
    best = int(iou.argmax())
    return logits[best].float().cpu(), float(iou[best])
