"""SAM2 as a proposer: one image encoding, then many single-point prompts.

The image encoder runs once per image (:meth:`Sam2Proposer.embed`); the mask decoder then
answers batches of prompts against that embedding (:meth:`Sam2Proposer.decode`). The decode
step is a small function of its own (:func:`decode_points_stock`, or the faster
:func:`refseg.models.fast_decoder.decode_points_fast` that gives the same outputs), so it can
be swapped without touching the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import Sam2Model

from ..base import Proposals
from ..malloc import release_freed_memory, retain_freed_memory

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DecoderName = Literal["fast", "stock"]
EncoderName = Literal["lean", "stock"]


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (..., 3, H, W) float images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def autocast_context(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, disabled for float32."""
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


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
    mask_size = 4 * embedding.image_embeddings.shape[-1]
    if not logits_parts:
        return empty_proposals(mask_size)
    return Proposals(torch.cat(logits_parts), torch.cat(iou_parts), torch.cat(point_parts))


PointDecoder = Callable[..., Proposals]


class Sam2Proposer:
    """Mask proposals from a ``transformers`` :class:`~transformers.Sam2Model`.

    Implements :class:`refseg.models.base.Proposer`. Inputs are moved to the model's device;
    outputs come back float32 on the CPU.

    Args:
        model: a SAM2 model (``Sam2Model``); put in eval mode and moved to ``device``.
        device: where to run (default: the model's current device).
        dtype: ``torch.float32`` (exact) or ``torch.bfloat16``/``torch.float16`` (autocast;
            the weights stay float32).
        decoder: ``"fast"`` (default, :mod:`refseg.models.fast_decoder`, same outputs) or
            ``"stock"`` (``Sam2Model.forward``, the straightforward path).
        encoder: ``"lean"`` (default: the Hiera blocks get the forwards of
            :mod:`refseg.models.lean_hiera`, same outputs in less memory; changes ``model``) or
            ``"stock"``. The choice is made on ``model`` itself: the last proposer built on
            a model decides for every proposer sharing it.
        name: where the weights came from (hub id or directory), for messages.
        check: compare the fast decoder and the lean encoder with transformers' own on small
            random inputs first (~1 s for Hiera-L on 2 CPU cores) and fall back to the stock
            ones, with a RuntimeWarning, where they differ (another transformers version).
            ``decoder`` and ``encoder`` then say what is used.
    """

    def __init__(
        self,
        model: Sam2Model,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        decoder: DecoderName = "fast",
        encoder: EncoderName = "lean",
        name: str = "sam2",
        check: bool = True,
    ) -> None:
        if decoder not in ("fast", "stock"):
            raise ValueError(f"decoder must be 'fast' or 'stock', not {decoder!r}")
        if encoder not in ("lean", "stock"):
            raise ValueError(f"encoder must be 'lean' or 'stock', not {encoder!r}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.eval().to(self.device)
        self.dtype = dtype
        self.decoder = decoder
        self.encoder = encoder
        if check:
            # The fast and lean paths use transformers' SAM2 internals: check them once on
            # small random inputs, fall back (with a warning) if this version differs.
            if decoder == "fast":
                from .fast_decoder import fast_or_stock

                self.decoder = fast_or_stock(self.model)
            if encoder == "lean":
                from .lean_hiera import lean_or_stock

                self.encoder = lean_or_stock(self.model)
        elif encoder == "lean":
            from .lean_hiera import make_lean

            make_lean(self.model)
        if self.encoder == "stock":  # the model may have been made lean by another proposer
            from .lean_hiera import make_stock

            make_stock(self.model)
        self.name = name
        prompt_config = model.config.prompt_encoder_config
        self.image_size: int = int(prompt_config.image_size)
        self.mask_size: int = 4 * (self.image_size // int(prompt_config.patch_size))

    def __repr__(self) -> str:
        return (
            f"Sam2Proposer(name={self.name!r}, device={str(self.device)!r}, dtype={self.dtype}, "
            f"decoder={self.decoder!r}, encoder={self.encoder!r})"
        )

    def _autocast(self) -> AbstractContextManager:
        return autocast_context(self.device, self.dtype)

    def _check_image(self, image: torch.Tensor) -> None:
        size = self.image_size
        if image.dim() != 3 or tuple(image.shape) != (3, size, size):
            raise ValueError(f"expected a (3, {size}, {size}) image, got {tuple(image.shape)}")

    @torch.inference_mode()
    def embed(self, image: torch.Tensor) -> Sam2ImageEmbedding:
        """Run the image encoder once.

        Args:
            image: (3, S, S) float in [0, 1], S = ``image_size``, not normalised.
        """
        self._check_image(image)
        if self.device.type == "cpu" and self.encoder == "lean":
            retain_freed_memory()  # from the first heavy stage on (models/malloc.py)
        pixels = imagenet_normalize(image.to(self.device, torch.float32))[None]
        with self._autocast():
            if self.encoder == "lean":
                from .lean_hiera import image_embeddings

                feat_s0, feat_s1, image_embeddings = image_embeddings(self.model, pixels)
            else:
                feat_s0, feat_s1, image_embeddings = self.model.get_image_embeddings(pixels)
        return Sam2ImageEmbedding(image_embeddings=image_embeddings, feat_s0=feat_s0, feat_s1=feat_s1)

    def _point_decoder(self) -> PointDecoder:
        if self.decoder == "fast":
            from .fast_decoder import decode_points_fast

            return decode_points_fast
        return decode_points_stock

    def decode(
        self,
        embedding: Sam2ImageEmbedding,
        points: torch.Tensor,
        *,
        batch_size: int = 64,
        iou_threshold: float = 0.4,
    ) -> Proposals:
        """Decode one single positive point prompt per point against an embedded image.

        Args:
            embedding: from :meth:`embed`.
            points: (P, 2) float (x, y) in S-space, as handed to the prompt encoder.
            batch_size: prompts per decoder call (compute only: results do not depend on it).
            iou_threshold: keep a prompt when its best predicted IoU is > this.

        Returns:
            Proposals of the surviving prompts, prompt order, float32 on the CPU:
            low_res_logits (N, 256, 256), predicted_iou (N,), points (N, 2).
        """
        if points.dim() != 2 or points.shape[1] != 2:
            raise ValueError(f"points must be (P, 2), got {tuple(points.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if points.shape[0] == 0:
            return empty_proposals(self.mask_size)
        with torch.inference_mode(), self._autocast():
            return self._point_decoder()(
                self.model, embedding, points, batch_size=batch_size, iou_threshold=iou_threshold
            )

    def propose(
        self,
        image: torch.Tensor,
        points: torch.Tensor,
        *,
        batch_size: int = 64,
        iou_threshold: float = 0.4,
    ) -> Proposals:
        """Embed ``image`` once, then :meth:`decode` ``points``; see the Proposer protocol."""
        embedding = self.embed(image)
        release_freed_memory()  # the encoder's temporaries, before the decoder's (models/malloc.py)
        return self.decode(embedding, points, batch_size=batch_size, iou_threshold=iou_threshold)

    @torch.inference_mode()
    def decode_boxes(
        self, embedding: Sam2ImageEmbedding, boxes: torch.Tensor, *, batch_size: int = 64
    ) -> torch.Tensor:
        """Single-mask output for box prompts against an embedded image.

        Args:
            embedding: from :meth:`embed`.
            boxes: (K, 4) float xyxy in S-space.
            batch_size: boxes per decoder call.

        Returns:
            (K, 256, 256) float32 low-resolution mask logits on the CPU.
        """
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (K, 4), got {tuple(boxes.shape)}")
        parts = []
        with self._autocast():
            for start in range(0, boxes.shape[0], batch_size):
                chunk = boxes[start : start + batch_size].to(self.device, torch.float32)
                outputs = self.model(
                    image_embeddings=embedding.as_list(),
                    input_boxes=chunk[None],
                    multimask_output=False,
                )
                parts.append(outputs.pred_masks[0, :, 0].float().cpu())
        if not parts:
            return torch.zeros((0, self.mask_size, self.mask_size), dtype=torch.float32)
        return torch.cat(parts)

    def masks_from_boxes(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Instance masks from box prompts (single-mask output); see the Proposer protocol.

        Args:
            image: (3, S, S) float in [0, 1].
            boxes: (K, 4) float xyxy in S-space.

        Returns:
            (K, 256, 256) float32 low-resolution mask logits on the CPU.
        """
        if boxes.shape[0] == 0:
            return torch.zeros((0, self.mask_size, self.mask_size), dtype=torch.float32)
        return self.decode_boxes(self.embed(image), boxes)
