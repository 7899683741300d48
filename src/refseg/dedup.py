"""Removing duplicates (docs/method.md section 5): class-wise box NMS, full-size masks kept as
tight crops, and semantic-aware soft merging, as pure functions on tensors and arrays.

:func:`refseg.matching.postprocess` chains them after scoring; each works on any device and
keeps no state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Upper bound on float32 elements of one upsampling chunk (128 MiB).
_UPSAMPLE_CHUNK_ELEMENTS = 1 << 25


# ---------------------------------------------------------------------------- boxes and NMS (section 5.1-5.3)


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU with area = (x2 - x1) * (y2 - y1), as torchvision.

    Args:
        boxes_a: (N, 4) xyxy. boxes_b: (M, 4) xyxy.

    Returns:
        (N, M) float32; 0 where the union is 0 (torchvision gives NaN there, which never
        exceeds an NMS threshold either).
    """
    boxes_a, boxes_b = boxes_a.float(), boxes_b.float()
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(torch.float32).tiny), 0.0)


def batched_nms(
    boxes: torch.Tensor, ranking: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Greedy class-wise NMS: a box is suppressed by a better-ranked kept box of its class
    whose IoU with it is > ``iou_threshold``.

    Args:
        boxes: (N, 4) xyxy.
        ranking: (N,) higher is better (SAM2 predicted IoU in the method); ties keep the
            earlier index first.
        labels: (N,) int; boxes of different labels never suppress each other.

    Returns:
        (K,) int64 indices of the kept boxes, best-ranked first.
    """
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    order = torch.argsort(ranking, descending=True, stable=True)
    sorted_boxes = boxes[order].float().cpu()
    sorted_labels = labels[order].cpu().numpy()
    kept = np.zeros(n, dtype=bool)
    for label in np.unique(sorted_labels):
        positions = np.flatnonzero(sorted_labels == label)
        index = torch.from_numpy(positions)
        over = (box_iou(sorted_boxes[index], sorted_boxes[index]) > iou_threshold).numpy()
        removed = np.zeros(len(positions), dtype=bool)
        for i in range(len(positions)):
            if removed[i]:
                continue
            kept[positions[i]] = True
            removed[i + 1 :] |= over[i, i + 1 :]
    return order[torch.from_numpy(np.flatnonzero(kept)).to(device)]


# ---------------------------------------------------------------------------- full-size masks (section 5.4)


def _upsampled_chunks(low_res_logits: torch.Tensor, size: tuple[int, int], antialias: bool = True):
    """Yield (start, (n_c, H, W) bool) chunks of the thresholded bilinear resize.

    Antialiased by default, as the research code: identical to plain bilinear where the mask
    is enlarged (every side of an image >= the low-resolution side, 256), a proper
    downsampling where a side is smaller."""
    height, width = size
    step = max(1, _UPSAMPLE_CHUNK_ELEMENTS // max(1, height * width))
    for start in range(0, low_res_logits.shape[0], step):
        logits = low_res_logits[start : start + step, None].float()
        upsampled = F.interpolate(
            logits, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias
        )
        yield start, upsampled[:, 0] > 0


def upsample_masks(
    low_res_logits: torch.Tensor, size: tuple[int, int], *, antialias: bool = True
) -> torch.Tensor:
    """Binary masks at the original size: bilinear resize (align_corners=False), > 0.

    ``antialias`` (default, the research code's final masks) matters only where a side of
    ``size`` is under the low-resolution side; SAM2's own predictor resizes without it.

    Works in chunks so only ~128 MiB of float32 is alive at a time besides the output.

    Args:
        low_res_logits: (N, m, m) mask logits.
        size: (H, W) target size.

    Returns:
        (N, H, W) bool.
    """
    height, width = int(size[0]), int(size[1])
    out = torch.zeros(
        (low_res_logits.shape[0], height, width), dtype=torch.bool, device=low_res_logits.device
    )
    for start, chunk in _upsampled_chunks(low_res_logits, (height, width), antialias):
        out[start : start + len(chunk)] = chunk
    return out


@dataclass
class CroppedMasks:
    """Binary masks stored as tight crops (CPU numpy), for memory-light pairwise work.

    Attributes:
        boxes: (N, 4) int64 xyxy, exclusive x2, y2; zeros for an empty mask.
        areas: (N,) int64 pixel counts.
        crops: N bool arrays, crop i of shape (y2 - y1, x2 - x1).
        size: (H, W) of the full masks.
    """

    boxes: np.ndarray
    areas: np.ndarray
    crops: list[np.ndarray]
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def empty(cls, size: tuple[int, int]) -> CroppedMasks:
        return cls(np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64), [], size)

    @classmethod
    def concatenate(cls, parts: list[CroppedMasks], size: tuple[int, int]) -> CroppedMasks:
        if not parts:
            return cls.empty(size)
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.areas for p in parts]),
            [crop for p in parts for crop in p.crops],
            size,
        )

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> CroppedMasks:
        """Crop (N, H, W) bool masks to their tight boxes."""
        n, height, width = masks.shape
        dense = masks.cpu().numpy()  # numpy reduces bool planes much faster than torch on CPU
        rows = dense.any(axis=2)  # (N, H)
        cols = dense.any(axis=1)  # (N, W)
        nonempty = cols.any(axis=1)
        boxes = np.zeros((n, 4), dtype=np.int64)
        boxes[:, 0] = cols.argmax(axis=1)
        boxes[:, 1] = rows.argmax(axis=1)
        boxes[:, 2] = width - cols[:, ::-1].argmax(axis=1)
        boxes[:, 3] = height - rows[:, ::-1].argmax(axis=1)
        boxes[~nonempty] = 0
        crops = [dense[i, y1:y2, x1:x2].copy() for i, (x1, y1, x2, y2) in enumerate(boxes)]
        areas = np.array([np.count_nonzero(crop) for crop in crops], dtype=np.int64)
        return cls(boxes, areas, crops, (height, width))

    def select(self, index: np.ndarray) -> CroppedMasks:
        return CroppedMasks(self.boxes[index], self.areas[index], [self.crops[i] for i in index], self.size)

    def to_dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N, H, W) bool full masks."""
        out = np.zeros((len(self), *self.size), dtype=bool)
        for i, (x1, y1, x2, y2) in enumerate(self.boxes):
            out[i, y1:y2, x1:x2] = self.crops[i]
        return torch.from_numpy(out).to(device)


def upsample_masks_cropped(low_res_logits: torch.Tensor, size: tuple[int, int]) -> CroppedMasks:
    """:func:`upsample_masks`, each result kept only as its tight crop.

    Args:
        low_res_logits: (N, m, m) mask logits.
        size: (H, W) target size.
    """
    size = (int(size[0]), int(size[1]))
    parts = [CroppedMasks.from_masks(chunk) for _, chunk in _upsampled_chunks(low_res_logits, size)]
    return CroppedMasks.concatenate(parts, size)


# ---------------------------------------------------------------------------- soft merging (section 5.5)


def _overlap_decay(cropped: CroppedMasks, similarity: np.ndarray) -> np.ndarray:
    """d_i = max over earlier j of (|m_i & m_j| / |m_i|) * similarity[i, j], 0 if none.

    ``similarity`` (n, n) must be >= 0 and masks all of one class, in rank order. Exact:
    pairs are visited by decreasing upper bound (box-overlap area, capped by |m_j|, times the
    similarity) and the search stops once the bound cannot beat the best found.
    """
    n = len(cropped)
    decay = np.zeros(n, dtype=np.float64)
    x1, y1, x2, y2 = (cropped.boxes[:, k] for k in range(4))
    areas = cropped.areas
    for i in range(1, n):
        if areas[i] == 0:
            continue
        overlap_w = np.clip(np.minimum(x2[i], x2[:i]) - np.maximum(x1[i], x1[:i]), 0, None)
        overlap_h = np.clip(np.minimum(y2[i], y2[:i]) - np.maximum(y1[i], y1[:i]), 0, None)
        bound = np.minimum(overlap_w * overlap_h, areas[:i]) / areas[i] * similarity[i, :i]
        candidates = np.flatnonzero(bound > 0)
        best = 0.0
        for j in candidates[np.argsort(-bound[candidates], kind="stable")]:
            if bound[j] <= best:
                break
            ox1, oy1 = max(x1[i], x1[j]), max(y1[i], y1[j])
            ox2, oy2 = min(x2[i], x2[j]), min(y2[i], y2[j])
            crop_i = cropped.crops[i][oy1 - y1[i] : oy2 - y1[i], ox1 - x1[i] : ox2 - x1[i]]
            crop_j = cropped.crops[j][oy1 - y1[j] : oy2 - y1[j], ox1 - x1[j] : ox2 - x1[j]]
            inter = np.count_nonzero(crop_i & crop_j)
            best = max(best, inter / areas[i] * similarity[i, j])
        decay[i] = best
    return decay


def soft_merge_cropped(
    cropped: CroppedMasks,
    features: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    exponent: float = 0.5,
) -> torch.Tensor:
    """:func:`soft_merge` on masks kept as tight crops (same arguments otherwise)."""
    n = len(cropped)
    if n == 0:
        return scores.clone()
    decay = np.zeros(n, dtype=np.float64)
    label_array = labels.cpu().numpy()
    features = features.float()
    for label in np.unique(label_array):
        members = np.flatnonzero(label_array == label)
        if len(members) < 2:
            continue
        index = torch.from_numpy(members).to(features.device)
        similarity = (features[index] @ features[index].T).clamp(min=0.0).cpu().double().numpy()
        decay[members] = _overlap_decay(cropped.select(members), similarity)
    decay_t = torch.from_numpy(decay).to(device=scores.device, dtype=torch.float32)
    merged = scores.float() * (1.0 - decay_t).clamp(min=0.0) ** exponent
    return torch.where(torch.from_numpy(cropped.areas > 0).to(scores.device), merged, 0.0)


def soft_merge(
    masks: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    exponent: float = 0.5,
) -> torch.Tensor:
    """Semantic-aware soft merging (docs/method.md 5.5).

    Within each class, in the given order: d_i = max over earlier masks j of the same class of
    (|m_i AND m_j| / |m_i|) * max(0, f_i . f_j), 0 if none; the score becomes
    s_i * (1 - d_i) ** exponent. Only pairs whose boxes overlap are intersected, on their
    overlap crop.

    Args:
        masks: (N, H, W) bool, in NMS order.
        features: (N, C) L2-normalised object features.
        labels: (N,) int class of each mask.
        scores: (N,) float scores.
        exponent: 0.5 in the paper.

    Returns:
        (N,) float32 new scores. An empty mask gets score 0 (the caller drops it); it never
        lowers another mask's score.
    """
    return soft_merge_cropped(CroppedMasks.from_masks(masks), features, labels, scores, exponent)
