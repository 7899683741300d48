"""Saving one configuration's predictions and comparing two of them.

Two comparisons, as issue 5 states them:

* :func:`compare_outputs`: are two results *identical*? Same instances in the same order
  (same count, same labels), equal masks, scores within a tolerance (1e-4).
* :func:`match_fraction`: which share of a reference result (float32) is found again in
  another (bfloat16)? An instance matches when an instance of the same class overlaps it
  with mask IoU >= 0.95 (one-to-one, greedy in the reference's score order).

:func:`numeric_fidelity` adds where two results part: SAM2 embedding and DINOv2 feature
errors, per-prompt proposal-mask agreement and logit errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Outputs:
    """The predictions of one configuration on one image, plus intermediate tensors.

    Attributes:
        masks: (N, H, W) bool instance masks at the original size.
        scores: (N,) float32.
        labels: (N,) int64 class index.
        boxes: (N, 4) float32 xyxy.
        predicted_iou: (P,) float32 SAM2 predicted IoU of every proposal that passed the
            IoU threshold, prompt order (empty when not recorded).
        points: (P, 2) float32 prompt point of each proposal.
        proposal_masks: (P, m, m) bool low-resolution proposal masks (logits > 0).
        logits_sample: (S, m, m) float32 low-resolution logits of a few proposals, those
            prompted at ``sample_points``.
        sample_points: (S, 2) float32 prompt points of the sampled proposals.
        image_embedding: (C, h, w) float32 SAM2 image embedding (lowest resolution).
        features: (C, g, g) float32 DINOv2 patch features of the target.
    """

    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    predicted_iou: np.ndarray
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float32))
    proposal_masks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=bool))
    logits_sample: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))
    sample_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float32))
    image_embedding: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write to a compressed ``.npz`` (boolean masks bit-packed)."""
        path = Path(path)
        np.savez_compressed(
            path,
            **_pack("masks", self.masks),
            **_pack("proposal_masks", self.proposal_masks),
            scores=self.scores.astype(np.float32),
            labels=self.labels.astype(np.int64),
            boxes=self.boxes.astype(np.float32),
            predicted_iou=self.predicted_iou.astype(np.float32),
            points=self.points.astype(np.float32),
            logits_sample=self.logits_sample.astype(np.float32),
            sample_points=self.sample_points.astype(np.float32),
            image_embedding=self.image_embedding.astype(np.float32),
            features=self.features.astype(np.float32),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> Outputs:
        with np.load(Path(path)) as data:
            arrays = {name: data[name] for name in data.files if not name.startswith(("packed_", "shape_"))}
            return cls(masks=_unpack(data, "masks"), proposal_masks=_unpack(data, "proposal_masks"), **arrays)


def _pack(name: str, masks: np.ndarray) -> dict[str, np.ndarray]:
    n = masks.shape[0]
    return {
        f"packed_{name}": np.packbits(masks.reshape(n, -1), axis=1),
        f"shape_{name}": np.array(masks.shape, dtype=np.int64),
    }


def _unpack(data: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    shape = tuple(int(v) for v in data[f"shape_{name}"])
    pixels = int(np.prod(shape[1:]))
    return np.unpackbits(data[f"packed_{name}"], axis=1, count=pixels).reshape(shape).astype(bool)


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


def _relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    if reference.size == 0 or reference.shape != candidate.shape:
        return float("nan")
    denominator = float(np.linalg.norm(reference.astype(np.float64)))
    difference = float(np.linalg.norm(reference.astype(np.float64) - candidate.astype(np.float64)))
    return difference / denominator if denominator > 0 else float("nan")


def numeric_fidelity(reference: Outputs, candidate: Outputs, iou_threshold: float = 0.95) -> dict[str, float]:
    """How far ``candidate`` (e.g. bfloat16) is from ``reference`` (float32), stage by stage.

    Proposals are paired by prompt point (a prompt may pass the IoU threshold in one and not
    the other).

    Returns:
        embedding_rel_error: ||e_c - e_r|| / ||e_r|| of the SAM2 image embedding.
        feature_cosine: mean over patches of cos(f_r, f_c) of the DINOv2 features.
        proposals_paired: share of reference proposals whose prompt also survived.
        proposal_mask_match: share of paired proposals with low-res mask IoU >= threshold.
        logits_rel_error: relative error of the sampled proposals' low-res logits.
        logits_scale: mean |logit| of the sampled reference proposals (random weights give
            tiny logits whose signs any rounding flips).
        predicted_iou_max_diff: largest |predicted IoU difference| over paired proposals.
    """
    result = {
        "embedding_rel_error": _relative_error(reference.image_embedding, candidate.image_embedding),
        "feature_cosine": float("nan"),
        "proposals_paired": float("nan"),
        "proposal_mask_match": float("nan"),
        "logits_rel_error": float("nan"),
        "logits_scale": float(np.abs(reference.logits_sample).mean())
        if reference.logits_sample.size
        else float("nan"),
        "predicted_iou_max_diff": float("nan"),
    }
    if reference.features.size and reference.features.shape == candidate.features.shape:
        a = reference.features.reshape(reference.features.shape[0], -1).astype(np.float64)
        b = candidate.features.reshape(candidate.features.shape[0], -1).astype(np.float64)
        norms = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
        result["feature_cosine"] = float(np.mean((a * b).sum(0) / np.maximum(norms, 1e-12)))
    if len(reference.points) == 0:
        return result
    position = {tuple(point): index for index, point in enumerate(candidate.points.tolist())}
    pairs = [(i, position[tuple(p)]) for i, p in enumerate(reference.points.tolist()) if tuple(p) in position]
    result["proposals_paired"] = len(pairs) / len(reference.points)
    if not pairs:
        return result
    ref_index, cand_index = (np.array(side) for side in zip(*pairs, strict=True))
    result["predicted_iou_max_diff"] = _max_abs_diff(
        reference.predicted_iou[ref_index], candidate.predicted_iou[cand_index]
    )
    if reference.proposal_masks.size and candidate.proposal_masks.size:
        a = reference.proposal_masks[ref_index].reshape(len(pairs), -1)
        b = candidate.proposal_masks[cand_index].reshape(len(pairs), -1)
        inter = np.logical_and(a, b).sum(1)
        union = np.logical_or(a, b).sum(1)
        iou = np.divide(inter, union, out=np.ones(len(pairs)), where=union > 0)
        result["proposal_mask_match"] = float(np.mean(iou >= iou_threshold))
    sampled = {tuple(point): k for k, point in enumerate(candidate.sample_points.tolist())}
    sample_pairs = [
        (k, sampled[tuple(point)])
        for k, point in enumerate(reference.sample_points.tolist())
        if tuple(point) in sampled
    ]
    if sample_pairs:
        ref_logits = np.stack([reference.logits_sample[k] for k, _ in sample_pairs])
        cand_logits = np.stack([candidate.logits_sample[j] for _, j in sample_pairs])
        result["logits_rel_error"] = _relative_error(ref_logits, cand_logits)
    return result
