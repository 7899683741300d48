"""Saving one configuration's predictions and comparing two of them.

Two comparisons, as issue 5 states them:

* :func:`compare_outputs`: are two results *identical*? Same instances in the same order
  (same count, same labels), equal masks, scores within a tolerance (1e-4).
* :func:`match_fraction`: which share of a reference result (float32) is found again in
  another (bfloat16)? An instance matches when an instance of the same class overlaps it
  with mask IoU >= 0.95 (one-to-one, greedy in the reference's score order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Outputs:
    """The predictions of one configuration on one image.

    Attributes:
        masks: (N, H, W) bool instance masks at the original size.
        scores: (N,) float32.
        labels: (N,) int64 class index.
        boxes: (N, 4) float32 xyxy.
        predicted_iou: (P,) float32 SAM2 predicted IoU of every proposal that passed the
            IoU threshold, prompt order (empty when not recorded).
    """

    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    predicted_iou: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write to a compressed ``.npz`` (masks bit-packed)."""
        path = Path(path)
        n, height, width = self.masks.shape
        np.savez_compressed(
            path,
            packed_masks=np.packbits(self.masks.reshape(n, -1), axis=1),
            mask_shape=np.array([n, height, width], dtype=np.int64),
            scores=self.scores.astype(np.float32),
            labels=self.labels.astype(np.int64),
            boxes=self.boxes.astype(np.float32),
            predicted_iou=self.predicted_iou.astype(np.float32),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> Outputs:
        with np.load(Path(path)) as data:
            n, height, width = (int(v) for v in data["mask_shape"])
            bits = np.unpackbits(data["packed_masks"], axis=1, count=height * width)
            return cls(
                masks=bits.reshape(n, height, width).astype(bool),
                scores=data["scores"],
                labels=data["labels"],
                boxes=data["boxes"],
                predicted_iou=data["predicted_iou"],
            )


@dataclass
class Comparison:
    """Whether a candidate result is identical to a reference one.

    Attributes:
        identical: same count, same labels in order, equal masks, scores within tolerance.
        count: (reference, candidate) instance counts.
        labels_equal: the label sequences are equal (False if the counts differ).
        masks_equal: every mask equal pixel for pixel (False if the counts differ).
        max_score_diff: largest |score difference| over paired instances (inf if the counts
            differ, 0 with no instances).
        proposals_equal: the same number of proposals passed the IoU threshold.
        max_predicted_iou_diff: largest |predicted IoU difference| over proposals (inf if
            their counts differ).
        reason: why not identical ("" when identical).
    """

    identical: bool
    count: tuple[int, int]
    labels_equal: bool
    masks_equal: bool
    max_score_diff: float
    proposals_equal: bool
    max_predicted_iou_diff: float
    reason: str


def compare_outputs(reference: Outputs, candidate: Outputs, score_tolerance: float = 1e-4) -> Comparison:
    """Are two results the same instances in the same order, masks equal, scores close?"""
    count = (len(reference), len(candidate))
    proposals_equal = reference.predicted_iou.shape == candidate.predicted_iou.shape
    iou_diff = (
        _max_abs_diff(reference.predicted_iou, candidate.predicted_iou) if proposals_equal else float("inf")
    )
    if count[0] != count[1]:
        return Comparison(
            False,
            count,
            False,
            False,
            float("inf"),
            proposals_equal,
            iou_diff,
            f"{count[0]} vs {count[1]} instances",
        )
    labels_equal = bool(np.array_equal(reference.labels, candidate.labels))
    masks_equal = reference.masks.shape == candidate.masks.shape and bool(
        np.array_equal(reference.masks, candidate.masks)
    )
    score_diff = _max_abs_diff(reference.scores, candidate.scores)
    reasons = []
    if not labels_equal:
        first = int(np.flatnonzero(reference.labels != candidate.labels)[0])
        reasons.append(f"labels differ from instance {first}")
    if not masks_equal:
        if reference.masks.shape != candidate.masks.shape:
            reasons.append(f"mask shapes {reference.masks.shape} vs {candidate.masks.shape}")
        else:
            pixels = int((reference.masks != candidate.masks).sum())
            reasons.append(f"masks differ in {pixels} pixels")
    if score_diff > score_tolerance:
        reasons.append(f"scores differ by up to {score_diff:.2e} (> {score_tolerance:g})")
    return Comparison(
        identical=not reasons,
        count=count,
        labels_equal=labels_equal,
        masks_equal=masks_equal,
        max_score_diff=score_diff,
        proposals_equal=proposals_equal,
        max_predicted_iou_diff=iou_diff,
        reason="; ".join(reasons),
    )


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """Pairwise mask IoU.

    Args:
        masks_a: (N, H, W) bool. masks_b: (M, H, W) bool.

    Returns:
        (N, M) float64; 0 where both masks are empty.
    """
    flat_a = masks_a.reshape(len(masks_a), -1).astype(np.float64)
    flat_b = masks_b.reshape(len(masks_b), -1).astype(np.float64)
    inter = flat_a @ flat_b.T
    union = flat_a.sum(1)[:, None] + flat_b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_fraction(reference: Outputs, candidate: Outputs, iou_threshold: float = 0.95) -> float:
    """Share of ``reference`` instances found in ``candidate``: same class, mask IoU >= threshold.

    Matching is one-to-one, greedy over the reference instances in their order (best score
    first), each taking the unused candidate of its class with the highest IoU. With no
    reference instances the share is 1.0 if the candidate has none either, else 0.0.
    """
    if len(reference) == 0:
        return 1.0 if len(candidate) == 0 else 0.0
    if len(candidate) == 0:
        return 0.0
    iou = mask_iou(reference.masks, candidate.masks)
    same_class = reference.labels[:, None] == candidate.labels[None, :]
    iou = np.where(same_class, iou, -1.0)
    used = np.zeros(len(candidate), dtype=bool)
    matched = 0
    for i in range(len(reference)):
        row = np.where(used, -1.0, iou[i])
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            used[j] = True
            matched += 1
    return matched / len(reference)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
