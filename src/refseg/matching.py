"""The method's scoring (docs/method.md sections 3-4 and 6) and the chain that ends in the
instances (section 5), as pure tensor functions; the de-duplication steps themselves (NMS,
full-size masks, soft merging) are in :mod:`refseg.dedup`.

Every function takes and returns torch tensors (float32 unless stated), works on any device
and keeps no state. :func:`postprocess` chains them in the paper's order:

    pool -> score -> low-res boxes -> class-wise NMS (ranked by predicted IoU) -> cap
    -> drop score 0 -> upsample -> drop empty -> soft merge -> top-k

With negative reference examples (a preset with ``negatives``, a departure from the paper),
scoring also vetoes classes by :func:`nearest_example_vetoes`, and proposals vetoed for every
class are dropped before NMS.

Inside :func:`postprocess` the full-resolution masks are kept as tight crops (box + bool
crop), so memory follows the objects' areas and only the returned top-k masks are pasted
into full (H, W) planes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .dedup import batched_nms, soft_merge_cropped, upsample_masks_cropped
from .errors import EncoderMismatchError
from .masks import masks_to_boxes_inclusive

logger = logging.getLogger(__name__)

PoolMethod = Literal["fast", "dense"]

# Masks pooled per matmul batch in the fast pooling path.
_POOL_CHUNK = 128


# ---------------------------------------------------------------------------- grid (section 3.3)


def point_grid(points_per_side: int, image_size: int = 1024, order: str = "x-fastest") -> torch.Tensor:
    """The regular prompt grid, in the proposer's input pixels.

    On each axis ``points_per_side`` evenly spaced values from 0 to ``image_size - 1``, plus
    0.5; these are handed to SAM2's prompt encoder as they are.

    Args:
        order: ``"x-fastest"`` (row-major: x varies fastest) or ``"x-slowest"`` (column-major,
            the research code's ``meshgrid`` order, :attr:`refseg.presets.Preset.grid_order`).
            Same points; only exact ties in NMS and in the final ranking see the order.

    Returns:
        (P, 2) float32 (x, y), P = points_per_side ** 2.
    """
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    if order not in ("x-fastest", "x-slowest"):
        raise ValueError(f"order must be 'x-fastest' or 'x-slowest', not {order!r}")
    axis = torch.linspace(0, image_size - 1, points_per_side, dtype=torch.float32) + 0.5
    slow, fast = torch.meshgrid(axis, axis, indexing="ij")
    xs, ys = (fast, slow) if order == "x-fastest" else (slow, fast)
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


# ---------------------------------------------------------------------------- scoring (section 4)


def interpolation_matrix(
    in_size: int, out_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The matrix of 1-D bilinear resizing (align_corners=False), as torch computes it.

    Built by resizing the identity basis with ``F.interpolate``, so ``A @ v`` equals resizing
    ``v`` along one axis, and a 2-D resize of ``X`` (h, w) is ``Ay @ X @ Ax.T``.

    Returns:
        (out_size, in_size) float32.
    """
    basis = torch.eye(in_size, dtype=torch.float32, device=device).reshape(1, in_size, in_size, 1)
    resized = F.interpolate(basis, size=(out_size, 1), mode="bilinear", align_corners=False)
    return resized[0, :, :, 0].T.contiguous()


def pool_object_features(
    feature_map: torch.Tensor, masks: torch.Tensor, method: PoolMethod = "fast"
) -> torch.Tensor:
    """Mean of the bilinearly upsampled feature map inside each mask, L2-normalised.

    The feature map is upsampled (align_corners=False) to the masks' grid. ``"dense"`` does
    exactly that; ``"fast"`` (same numbers up to float rounding) never builds the upsampled
    (C, M, M) map: upsampling is linear and separable, ``U = Ay F Ax^T``, so the sum of ``U``
    over a mask ``m`` is the sum of ``F`` weighted by ``Ay^T m Ax`` (h, w).

    Args:
        feature_map: (C, h, w) patch features (cast to float32).
        masks: (N, Hm, Wm) bool binary masks on the upsampling grid.
        method: "fast" (default) or "dense".

    Returns:
        (N, C) float32 unit vectors; an empty mask gives a zero vector.
    """
    feature_map = feature_map.float()
    channels, height, width = feature_map.shape
    n, mask_h, mask_w = masks.shape
    if n == 0:
        return feature_map.new_zeros((0, channels))
    if method == "dense":
        counts = masks.reshape(n, -1).sum(dim=1).to(torch.float32)
        upsampled = F.interpolate(
            feature_map[None], size=(mask_h, mask_w), mode="bilinear", align_corners=False
        )
        sums = masks.reshape(n, -1).to(torch.float32) @ upsampled[0].reshape(channels, -1).T
    elif method == "fast":
        rows = interpolation_matrix(height, mask_h, feature_map.device)  # (Hm, h)
        cols = interpolation_matrix(width, mask_w, feature_map.device)  # (Wm, w)
        flat_features = feature_map.reshape(channels, height * width).T  # (h*w, C)
        sums = feature_map.new_empty((n, channels))
        counts = feature_map.new_empty(n)
        for start in range(0, n, _POOL_CHUNK):
            chunk = masks[start : start + _POOL_CHUNK].to(torch.float32)  # (n_c, Hm, Wm)
            n_c = len(chunk)
            counts[start : start + n_c] = chunk.sum(dim=(1, 2))
            along_cols = (chunk.reshape(n_c * mask_h, mask_w) @ cols).reshape(n_c, mask_h, width)
            weights = rows.T @ along_cols  # (n_c, h, w)
            sums[start : start + n_c] = weights.reshape(n_c, -1) @ flat_features
    else:
        raise ValueError(f"method must be 'fast' or 'dense', got {method!r}")
    means = sums / counts.clamp(min=1.0)[:, None]
    return F.normalize(means, dim=1)


def score_proposals(
    object_features: torch.Tensor, prototypes: torch.Tensor, vetoed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One label and score per proposal: s_ic = max(0, cos), label = argmax_c, score = max_c.

    Args:
        object_features: (N, C) L2-normalised (zero rows allowed: they score 0).
        prototypes: (K, C) L2-normalised class prototypes.
        vetoed: (N, K) bool or None: where True, s_ic = 0 (the proposal may not be class c;
            :func:`nearest_example_vetoes`). None: the paper's scores.

    Returns:
        scores (N,) float32 in [0, 1] and labels (N,) int64 (the first class on ties). With
        no prototypes (K = 0) every score is 0 and every label 0.
    """
    n, channels = object_features.shape
    if prototypes.shape[0] == 0:
        return object_features.new_zeros(n), torch.zeros(n, dtype=torch.int64, device=object_features.device)
    if prototypes.shape[1] != channels:
        raise EncoderMismatchError(
            f"Object features have {channels} dimensions but the memory's prototypes have "
            f"{prototypes.shape[1]}: the memory bank was built with another encoder. Rebuild it "
            "with this encoder, or load the encoder it was built with."
        )
    similarity = (object_features.float() @ prototypes.float().T).clamp(min=0.0)
    if vetoed is not None:
        similarity = similarity.masked_fill(vetoed.to(similarity.device), 0.0)
    scores, labels = similarity.max(dim=1)
    return scores, labels


# ---------------------------------------------------------------------------- negative examples (section 6)


@dataclass
class ReferenceExamples:
    """A memory's reference features by kind, for :func:`nearest_example_vetoes`.

    Attributes:
        positive_features: (P, C) features of the positive references (any norm).
        positive_labels: (P,) int64 class index of each.
        negative_features: (M, C) features of the negative references (any norm).
        negative_labels: (M,) int64 class index of each; -1 for a background negative (one
            that belongs to no class and counts against every class).
    """

    positive_features: torch.Tensor
    positive_labels: torch.Tensor
    negative_features: torch.Tensor
    negative_labels: torch.Tensor


def nearest_example_vetoes(
    object_features: torch.Tensor, examples: ReferenceExamples, num_classes: int
) -> torch.Tensor:
    """Which classes each proposal is vetoed for by the negative examples (the nearest-example rule).

    For proposal i and class c, with P_c the class's positive reference features and N_c its
    negative features plus every background negative (all L2-normalised): proposal i is
    vetoed for c when max_{n in N_c} cos(f_i, n) > max_{p in P_c} cos(f_i, p), i.e. when its
    nearest example among the user's "c" and "not c" examples is a "not c" one (a 1-nearest-
    neighbour decision, no parameter). Ties go to the positives; a class without negatives is
    never vetoed. Why this rule: docs/method.md 6.4.

    Args:
        object_features: (N, C) L2-normalised proposal features.
        examples: the memory's positive and negative reference features.
        num_classes: K; class indices of ``examples`` are in [0, K) (or -1 for the background).

    Returns:
        (N, K) bool, True where proposal i may not be class c.
    """
    n = object_features.shape[0]
    device = object_features.device
    features = object_features.float()

    def nearest(example_features: torch.Tensor, labels: torch.Tensor, columns: int) -> torch.Tensor:
        """(N, columns) best cosine per class index (``-inf`` where a class has no example)."""
        best = torch.full((n, columns), float("-inf"), device=device)
        if example_features.shape[0] == 0:
            return best
        similarity = features @ F.normalize(example_features.float().to(device), dim=1).T  # (N, E)
        index = labels.to(device=device, dtype=torch.int64)[None, :].expand(n, -1)
        return best.scatter_reduce(1, index, similarity, reduce="amax")

    best_positive = nearest(examples.positive_features, examples.positive_labels, num_classes)
    # background negatives (label -1) go to an extra last column, then count for every class
    negative_labels = examples.negative_labels.to(torch.int64)
    negative_labels = torch.where(negative_labels < 0, num_classes, negative_labels)
    best_negative = nearest(examples.negative_features, negative_labels, num_classes + 1)
    best_negative = torch.maximum(best_negative[:, :num_classes], best_negative[:, num_classes:])
    return best_negative > best_positive


# ---------------------------------------------------------------------------- the whole chain (section 5)


@dataclass
class MatchResult:
    """The instances of one target, best score first.

    Attributes:
        masks: (M, H, W) bool at the original size.
        boxes: (M, 4) float32 xyxy in original pixels, exclusive x2, y2 (from ``masks``).
        scores: (M,) float32 scores after soft merging.
        labels: (M,) int64 prototype index.
        indices: (M,) int64 index of each instance's proposal in the input.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def postprocess(
    low_res_logits: torch.Tensor,
    predicted_iou: torch.Tensor,
    feature_map: torch.Tensor,
    prototypes: torch.Tensor,
    image_size: tuple[int, int],
    *,
    nms_threshold: float = 0.5,
    max_candidates: int = 800,
    merge_exponent: float = 0.5,
    max_instances: int = 100,
    pool: PoolMethod = "fast",
    examples: ReferenceExamples | None = None,
) -> MatchResult:
    """Proposals + target features + prototypes -> final instances (docs/method.md 4.2 to 5.6).

    Args:
        low_res_logits: (N, m, m) SAM2 low-resolution mask logits (m = 256).
        predicted_iou: (N,) SAM2 predicted IoU (the NMS ranking).
        feature_map: (C, h, w) target patch features.
        prototypes: (K, C) L2-normalised class prototypes.
        image_size: (H, W) of the original image.
        nms_threshold: class-wise box-NMS IoU threshold.
        max_candidates: NMS survivors kept, in NMS order, before dropping score-0 ones.
        merge_exponent: soft-merge exponent.
        max_instances: instances returned.
        pool: pooling path, "fast" or "dense" (equal up to float rounding).
        examples: the memory's positive and negative reference features, to veto classes by
            :func:`nearest_example_vetoes`: a vetoed class scores 0, and a proposal vetoed for
            every class is dropped before NMS (it is none of the classes, and must not suppress
            an instance it overlaps). None (the paper): no veto.

    Returns:
        A :class:`MatchResult` (empty tensors of the right shapes when nothing survives).
    """
    height, width = int(image_size[0]), int(image_size[1])
    device = low_res_logits.device
    binary = low_res_logits > 0
    features = pool_object_features(feature_map, binary, method=pool)
    vetoed = None if examples is None else nearest_example_vetoes(features, examples, prototypes.shape[0])
    scores, labels = score_proposals(features, prototypes, vetoed)
    if vetoed is None:
        keep = batched_nms(masks_to_boxes_inclusive(binary), predicted_iou, labels, nms_threshold)
    else:
        allowed = torch.nonzero(~vetoed.all(dim=1)).flatten()
        ranked = batched_nms(
            masks_to_boxes_inclusive(binary[allowed]), predicted_iou[allowed], labels[allowed], nms_threshold
        )
        keep = allowed[ranked]
    n_nms = len(keep)
    keep = keep[:max_candidates]
    keep = keep[scores[keep] > 0]
    cropped = upsample_masks_cropped(low_res_logits[keep], (height, width))
    nonempty = np.flatnonzero(cropped.areas > 0)
    cropped = cropped.select(nonempty)
    keep = keep[torch.from_numpy(nonempty).to(device)]
    merged = soft_merge_cropped(cropped, features[keep], labels[keep], scores[keep], merge_exponent)
    top = torch.argsort(merged, descending=True, stable=True)[:max_instances]
    logger.debug(
        "matching: %d proposals, %d after NMS, %d scored and non-empty, %d returned",
        low_res_logits.shape[0],
        n_nms,
        len(keep),
        len(top),
    )
    final = cropped.select(top.cpu().numpy())
    return MatchResult(
        masks=final.to_dense(device),
        boxes=torch.from_numpy(final.boxes.astype(np.float32)).to(device),
        scores=merged[top].float(),
        labels=labels[keep][top].to(torch.int64),
        indices=keep[top].to(torch.int64),
    )
