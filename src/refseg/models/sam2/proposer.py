"""SAM2 as a proposer: one image encoding, then any number of prompts against it.

The image encoder runs once per image (:meth:`Sam2Proposer.embed`); the mask decoder then
answers prompts against that embedding: the point grid (:meth:`Sam2Proposer.decode_points`,
stock or the faster :mod:`refseg.models.sam2.fast_decoder` with the same outputs), boxes
(:meth:`Sam2Proposer.decode_boxes`) and the points and box of one object
(:meth:`Sam2Proposer.decode_prompts`), as segment-anything's predictor does after
``set_image``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal

import torch
from transformers import Sam2Model

from ..base import Proposals
from ..inputs import autocast_context, imagenet_normalize
from . import lean_hiera
from .embedding import (
    Sam2ImageEmbedding,
    decode_boxes_stock,
    decode_points_stock,
    decode_prompts_stock,
    empty_proposals,
)
from .fast_decoder import decode_points_fast, fast_or_stock
from .options import DEFAULT_OPTIONS, Sam2Options

DecoderName = Literal["fast", "stock"]
EncoderName = Literal["lean", "stock"]


class Sam2Proposer:
    """Mask proposals from a ``transformers`` :class:`~transformers.Sam2Model`.

    Implements :class:`refseg.models.base.Proposer`. Inputs are moved to the model's device;
    outputs come back float32 on the CPU. The model is only read: proposers with different
    choices below can share one model.

    Args:
        model: a SAM2 model (``Sam2Model``); put in eval mode and moved to ``device``.
        device: where to run (default: the model's current device).
        dtype: ``torch.float32`` (exact) or ``torch.bfloat16``/``torch.float16`` (autocast;
            the weights stay float32).
        decoder: ``"fast"`` (default, :mod:`refseg.models.sam2.fast_decoder`, same outputs) or
            ``"stock"`` (``Sam2Model.forward``, the straightforward path) for the point grid.
        encoder: ``"lean"`` (default: :mod:`refseg.models.sam2.lean_hiera`, same outputs in
            less memory) or ``"stock"``.
        options: how the fast decoder and the lean encoder split their work (results do not
            depend on it); default :class:`Sam2Options()`.
        name: where the weights came from (hub id or directory), for messages.
        check: compare the fast decoder and the lean encoder with transformers' own on small
            random inputs first (cheap next to loading) and fall back to the stock ones, with
            a RuntimeWarning, where they differ (another transformers version). ``decoder``
            and ``encoder`` then say what is used.
    """

    def __init__(
        self,
        model: Sam2Model,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        decoder: DecoderName = "fast",
        encoder: EncoderName = "lean",
        options: Sam2Options | None = None,
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
        self.options = options if options is not None else DEFAULT_OPTIONS
        self.decoder: DecoderName = decoder
        self.encoder: EncoderName = encoder
        if check:
            # The fast and lean paths use transformers' SAM2 internals: check them once on
            # small random inputs, fall back (with a warning) if this version differs.
            if decoder == "fast":
                self.decoder = fast_or_stock(self.model, self.options)
            if encoder == "lean":
                self.encoder = lean_hiera.lean_or_stock(self.model, self.options)
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
    def embed(self, image: torch.Tensor, *, no_memory_embedding: bool = True) -> Sam2ImageEmbedding:
        """Run the image encoder once.

        Args:
            image: (3, S, S) float in [0, 1], S = ``image_size``, not normalised.
            no_memory_embedding: add the model's ``no_memory_embedding`` to the lowest-resolution
                features, as SAM2's image predictor and transformers' ``get_image_embeddings``
                do; False gives the features as the backbone makes them (the research code's
                grid, ``paper``). Both encoders (lean and stock) honour it.

        Returns:
            The image's features on the model's device, for any number of decode calls.
        """
        self._check_image(image)
        pixels = imagenet_normalize(image.to(self.device, torch.float32))[None]
        with self._autocast():
            if self.encoder == "lean":
                maps = lean_hiera.image_embeddings(
                    self.model, pixels, self.options.tokens_per_piece, no_memory_embedding=no_memory_embedding
                )
            elif no_memory_embedding:
                maps = self.model.get_image_embeddings(pixels)
            else:
                maps = stock_features_without_no_memory(self.model, pixels)
        feat_s0, feat_s1, image_embeddings = maps
        return Sam2ImageEmbedding(image_embeddings=image_embeddings, feat_s0=feat_s0, feat_s1=feat_s1)

    def decode_points(
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
            low_res_logits (N, 256, 256), predicted_iou (N,), points (N, 2); per prompt the
            best of the three multimask outputs by predicted IoU.
        """
        if points.dim() != 2 or points.shape[1] != 2:
            raise ValueError(f"points must be (P, 2), got {tuple(points.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if points.shape[0] == 0:
            return empty_proposals(self.mask_size)
        arguments = {"batch_size": batch_size, "iou_threshold": iou_threshold}
        with torch.inference_mode(), self._autocast():
            if self.decoder == "fast":
                return decode_points_fast(self.model, embedding, points, options=self.options, **arguments)
            return decode_points_stock(self.model, embedding, points, **arguments)

    def propose(
        self,
        image: torch.Tensor,
        points: torch.Tensor,
        *,
        batch_size: int = 64,
        iou_threshold: float = 0.4,
    ) -> Proposals:
        """:meth:`embed` ``image``, then :meth:`decode_points` ``points`` (a shorthand)."""
        embedding = self.embed(image)
        return self.decode_points(embedding, points, batch_size=batch_size, iou_threshold=iou_threshold)

    def decode_boxes(
        self, embedding: Sam2ImageEmbedding, boxes: torch.Tensor, *, batch_size: int = 64
    ) -> torch.Tensor:
        """One object per box prompt (single-mask output) against an embedded image.

        Args:
            embedding: from :meth:`embed`.
            boxes: (K, 4) float xyxy in S-space.
            batch_size: boxes per decoder call (compute only).

        Returns:
            (K, 256, 256) float32 low-resolution mask logits on the CPU.
        """
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (K, 4), got {tuple(boxes.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with torch.inference_mode(), self._autocast():
            return decode_boxes_stock(self.model, embedding, boxes, batch_size=batch_size)

    def decode_prompts(
        self,
        embedding: Sam2ImageEmbedding,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        box: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float]:
        """The mask of one object prompted by points (positive or negative) and/or a box.

        As SAM2's own image predictor is used: a single point without a box gives the best of
        the three multimask outputs by predicted IoU; several points, or a box with or without
        points, give the single-mask output.

        Args:
            embedding: from :meth:`embed`.
            points: (P, 2) float (x, y) in S-space, or None.
            labels: (P,) 1 (object) or 0 (not the object); None means all 1.
            box: (4,) float xyxy in S-space, or None.

        Returns:
            (256, 256) float32 low-resolution logits on the CPU, and their predicted IoU.
        """
        points, labels, box = check_prompts(points, labels, box)
        with torch.inference_mode(), self._autocast():
            return decode_prompts_stock(self.model, embedding, points, labels, box)


def stock_features_without_no_memory(model: Sam2Model, pixels: torch.Tensor) -> list[torch.Tensor]:
    """``Sam2Model.get_image_embeddings(pixels)`` without its one addition, the no-memory
    embedding (transformers' own ``get_image_features``, laid out as ``get_image_embeddings``
    lays it out: (B, C, h, w) per level, high to low resolution)."""
    batch_size = pixels.shape[0]
    feature_maps = model.get_image_features(pixels, return_dict=True).fpn_hidden_states
    return [
        feature.permute(1, 2, 0).reshape(batch_size, -1, *size)
        for feature, size in zip(feature_maps, model.backbone_feature_sizes, strict=True)
    ]


def check_prompts(
    points: torch.Tensor | None, labels: torch.Tensor | None, box: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The prompts of one object as tensors of the expected shapes (labels default to 1).

    Raises:
        ValueError: no prompt at all, or a prompt of the wrong shape or label.
    """
    if points is not None:
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.dim() != 2 or points.shape[1] != 2 or points.shape[0] == 0:
            raise ValueError(f"points must be (P, 2) with P >= 1, got {tuple(points.shape)}")
        labels = torch.ones(points.shape[0], dtype=torch.int32) if labels is None else torch.as_tensor(labels)
        if tuple(labels.shape) != (points.shape[0],):
            raise ValueError(f"labels must be ({points.shape[0]},), got {tuple(labels.shape)}")
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("labels must be 1 (object) or 0 (not the object)")
        labels = labels.to(torch.int32)
    elif labels is not None:
        raise ValueError("labels were given without points")
    if box is not None:
        box = torch.as_tensor(box, dtype=torch.float32)
        if tuple(box.shape) != (4,):
            raise ValueError(f"box must be (4,) x1, y1, x2, y2, got {tuple(box.shape)}")
    if points is None and box is None:
        raise ValueError("a prompt needs points or a box")
    return points, labels, box
