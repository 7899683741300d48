"""Matching (docs/method.md sections 4-5) timed on synthetic proposals with realistic survivors.

With random weights SAM2's predicted IoUs are all ~0.52 and box NMS leaves only a handful of
proposals, so an end-to-end run on random weights under-counts pooling and soft merging.
Here the proposals are synthetic: hundreds of elliptic blobs on the 256x256 low-resolution
grid (true objects, jittered duplicates, fragments and distractors), a feature map in which
each object carries its class direction, and 20 class prototypes. The paper's chain then
keeps a few hundred survivors after NMS, as on a busy natural image.

Three implementations are timed on the same inputs and must give the same instances:

* ``optimised``: :func:`refseg.matching.postprocess` (fast pooling, cropped soft merge);
* ``dense pooling``: the same with the upsampled 256x256xC feature map built;
* ``straightforward``: written here from docs/method.md as research code would: dense pooling,
  every survivor upsampled to a full (H, W) plane, all pairwise intersections from one
  dense product. It shares only box NMS with refseg (not a lever).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from refseg import dedup, matching
from refseg.masks import masks_to_boxes_inclusive

LOW_RES = 256


@dataclass
class MatchingInputs:
    """Everything :func:`refseg.matching.postprocess` takes.

    Attributes:
        low_res_logits: (N, 256, 256) float32 mask logits.
        predicted_iou: (N,) float32.
        feature_map: (C, g, g) float32 target features.
        prototypes: (K, C) float32 unit class prototypes.
        image_size: (H, W) of the original image.
    """

    low_res_logits: torch.Tensor
    predicted_iou: torch.Tensor
    feature_map: torch.Tensor
    prototypes: torch.Tensor
    image_size: tuple[int, int]


def _ellipse_logits(cy: float, cx: float, ry: float, rx: float, size: int = LOW_RES) -> torch.Tensor:
    """(size, size) smooth logits, > 0 inside the ellipse, in [-20, 20] (-20 far outside).

    Computed only on the ellipse's box plus a margin, so building hundreds stays cheap.
    """
    out = torch.full((size, size), -20.0)
    top, bottom = max(0, int(cy - ry) - 3), min(size, int(cy + ry) + 4)
    left, right = max(0, int(cx - rx) - 3), min(size, int(cx + rx) + 4)
    if bottom <= top or right <= left:
        return out
    ys = torch.arange(top, bottom, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(left, right, dtype=torch.float32)[None, :] + 0.5
    radius2 = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
    out[top:bottom, left:right] = (6.0 * (1.0 - radius2)).clamp(-20.0, 20.0)
    return out


def synthetic_matching_inputs(
    n_objects: int = 150,
    image_size: tuple[int, int] = (480, 640),
    channels: int = 1024,
    classes: int = 20,
    feature_grid: int = 37,
    seed: int = 0,
) -> MatchingInputs:
    """Synthetic proposals on one target.

    Per object: the true mask (predicted IoU 0.9-0.99), 3 jittered duplicates (0.6-0.9; NMS
    removes most), one fragment (half the object, 0.5-0.8); plus ``n_objects // 3``
    distractors with features of no class. About 5.3 proposals per object.

    Args:
        n_objects: number of objects.
        image_size: (H, W) of the original image.
        channels: feature size C (1024 for DINOv2-L, 384 for DINOv2-S).
        classes: number of classes K.
        feature_grid: side g of the feature map (37 at 518 input).
        seed: generator seed.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    axis = torch.arange(LOW_RES, dtype=torch.float32) + 0.5
    grid_y, grid_x = axis[:, None], axis[None, :]
    directions = F.normalize(torch.randn((classes, channels), generator=generator), dim=1)
    features = 0.5 * torch.randn((channels, feature_grid, feature_grid), generator=generator)
    cell = (torch.arange(feature_grid, dtype=torch.float32) + 0.5) * LOW_RES / feature_grid
    cell_y, cell_x = torch.meshgrid(cell, cell, indexing="ij")

    logits, ious = [], []
    for index in range(n_objects + n_objects // 3):
        cy, cx = uniform(10, LOW_RES - 10), uniform(10, LOW_RES - 10)
        ry, rx = uniform(5, 40), uniform(5, 40)
        inside_cells = ((cell_y - cy) / ry) ** 2 + ((cell_x - cx) / rx) ** 2 < 1.0
        if index >= n_objects:  # distractor: a feature direction of no class
            direction = F.normalize(torch.randn(channels, generator=generator), dim=0)
            features[:, inside_cells] += 3.0 * direction[:, None]
            logits.append(_ellipse_logits(cy, cx, ry, rx))
            ious.append(uniform(0.45, 0.9))
            continue
        label = int(torch.randint(classes, (), generator=generator))
        features[:, inside_cells] += 3.0 * directions[label][:, None]
        logits.append(_ellipse_logits(cy, cx, ry, rx))
        ious.append(uniform(0.9, 0.99))
        for _ in range(3):
            jitter = _ellipse_logits(
                cy + uniform(-3, 3),
                cx + uniform(-3, 3),
                ry * uniform(0.85, 1.15),
                rx * uniform(0.85, 1.15),
            )
            logits.append(jitter)
            ious.append(uniform(0.6, 0.9))
        angle = uniform(0, 2 * math.pi)
        half_plane = 6.0 * ((grid_x - cx) * math.cos(angle) + (grid_y - cy) * math.sin(angle)) / max(rx, ry)
        logits.append(torch.minimum(_ellipse_logits(cy, cx, ry, rx), half_plane.clamp(-20, 20)))
        ious.append(uniform(0.5, 0.8))
    order = torch.randperm(len(logits), generator=generator)  # prompts come in grid order, not by object
    return MatchingInputs(
        low_res_logits=torch.stack(logits)[order],
        predicted_iou=torch.tensor(ious, dtype=torch.float32)[order],
        feature_map=features,
        prototypes=directions,
        image_size=image_size,
    )


def straightforward_postprocess(
    inputs: MatchingInputs,
    *,
    nms_threshold: float = 0.5,
    max_candidates: int = 800,
    merge_exponent: float = 0.5,
    max_instances: int = 100,
) -> matching.MatchResult:
    """docs/method.md 4.2-5.6 the direct way: dense maps and dense pairwise products."""
    logits = inputs.low_res_logits
    binary = logits > 0
    channels = inputs.feature_map.shape[0]
    upsampled = F.interpolate(
        inputs.feature_map[None], size=binary.shape[1:], mode="bilinear", align_corners=False
    )
    flat = binary.reshape(len(binary), -1).float()
    sums = flat @ upsampled[0].reshape(channels, -1).T
    features = F.normalize(sums / flat.sum(1).clamp(min=1)[:, None], dim=1)
    similarity = (features @ inputs.prototypes.T).clamp(min=0)
    scores, labels = similarity.max(dim=1)
    keep = dedup.batched_nms(masks_to_boxes_inclusive(binary), inputs.predicted_iou, labels, nms_threshold)
    keep = keep[:max_candidates]
    keep = keep[scores[keep] > 0]
    # antialiased, as refseg and the research code resize full-size masks (docs/fidelity.md D14)
    upsampled_masks = F.interpolate(
        logits[keep][:, None], size=inputs.image_size, mode="bilinear", align_corners=False, antialias=True
    )
    masks = upsampled_masks[:, 0] > 0
    areas = masks.flatten(1).sum(1)
    keep, masks, areas = keep[areas > 0], masks[areas > 0], areas[areas > 0]
    masks_flat = masks.flatten(1).float()
    intersections = masks_flat @ masks_flat.T  # exact: counts < 2**24
    kept_features, kept_labels = features[keep], labels[keep]
    pair_similarity = (kept_features @ kept_features.T).clamp(min=0)
    overlap = intersections / areas[:, None].float() * pair_similarity
    n = len(keep)
    earlier_same_class = torch.tril(torch.ones((n, n), dtype=torch.bool), diagonal=-1) & (
        kept_labels[:, None] == kept_labels[None, :]
    )
    decay = torch.where(earlier_same_class, overlap, 0.0).amax(dim=1) if n else torch.zeros(0)
    merged = scores[keep] * (1 - decay).clamp(min=0) ** merge_exponent
    top = torch.argsort(merged, descending=True, stable=True)[:max_instances]
    final_masks = masks[top]
    return matching.MatchResult(
        masks=final_masks,
        boxes=masks_to_boxes_inclusive(final_masks) + torch.tensor([0.0, 0.0, 1.0, 1.0]),  # exclusive x2, y2
        scores=merged[top],
        labels=kept_labels[top],
        indices=keep[top],
    )


def _best_time(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def same_result(a: matching.MatchResult, b: matching.MatchResult, score_tolerance: float = 1e-4) -> bool:
    """Same instances in the same order, equal masks, scores within tolerance."""
    return (
        len(a) == len(b)
        and torch.equal(a.indices, b.indices)
        and torch.equal(a.labels, b.labels)
        and torch.equal(a.masks, b.masks)
        and bool((a.scores - b.scores).abs().max() <= score_tolerance if len(a) else True)
    )


def time_matching(inputs: MatchingInputs, repeats: int = 3) -> dict[str, object]:
    """Time the three matching implementations and two levers alone on ``inputs``.

    Returns:
        A dict: proposals, survivors (after NMS, score > 0), instances, seconds per
        implementation (best of ``repeats``), lever timings (pooling fast vs dense, soft
        merge cropped vs dense), and whether all three gave the same instances.
    """
    args = (
        inputs.low_res_logits,
        inputs.predicted_iou,
        inputs.feature_map,
        inputs.prototypes,
        inputs.image_size,
    )
    t_fast, fast = _best_time(lambda: matching.postprocess(*args, pool="fast"), repeats)
    t_dense, dense = _best_time(lambda: matching.postprocess(*args, pool="dense"), repeats)
    t_naive, naive = _best_time(lambda: straightforward_postprocess(inputs), repeats)

    binary = inputs.low_res_logits > 0
    t_pool_fast, _ = _best_time(
        lambda: matching.pool_object_features(inputs.feature_map, binary, "fast"), repeats
    )
    t_pool_dense, _ = _best_time(
        lambda: matching.pool_object_features(inputs.feature_map, binary, "dense"), repeats
    )
    features = matching.pool_object_features(inputs.feature_map, binary, "fast")
    scores, labels = matching.score_proposals(features, inputs.prototypes)
    keep = dedup.batched_nms(masks_to_boxes_inclusive(binary), inputs.predicted_iou, labels, 0.5)[:800]
    keep = keep[scores[keep] > 0]

    def merge_cropped() -> torch.Tensor:
        cropped = dedup.upsample_masks_cropped(inputs.low_res_logits[keep], inputs.image_size)
        return dedup.soft_merge_cropped(cropped, features[keep], labels[keep], scores[keep])

    def merge_dense() -> torch.Tensor:
        masks = dedup.upsample_masks(inputs.low_res_logits[keep], inputs.image_size).flatten(1).float()
        areas = masks.sum(1)
        inter = masks @ masks.T
        overlap = inter / areas.clamp(min=1)[:, None] * (features[keep] @ features[keep].T).clamp(min=0)
        # an empty mask has no intersection with any mask, so it never lowers another's score
        same = torch.tril(labels[keep][:, None] == labels[keep][None, :], diagonal=-1)
        decay = torch.where(same, overlap, 0.0).amax(dim=1)
        merged = scores[keep] * (1 - decay).clamp(min=0) ** 0.5
        return torch.where(areas > 0, merged, 0.0)

    t_merge_cropped, merged_a = _best_time(merge_cropped, repeats)
    t_merge_dense, merged_b = _best_time(merge_dense, repeats)
    return {
        "proposals": len(inputs.low_res_logits),
        "survivors": int(len(keep)),
        "instances": len(fast),
        "image_size": list(inputs.image_size),
        "channels": int(inputs.feature_map.shape[0]),
        "seconds": {"optimised": t_fast, "dense_pooling": t_dense, "straightforward": t_naive},
        "levers": {
            "pool_fast": t_pool_fast,
            "pool_dense": t_pool_dense,
            "merge_cropped": t_merge_cropped,
            "merge_dense": t_merge_dense,
        },
        "identical": same_result(fast, dense) and same_result(fast, naive),
        "merge_identical": bool((merged_a - merged_b).abs().max() <= 1e-5) if len(keep) else True,
    }


def memory_file_size(
    path: str | Path, classes: int = 20, shots: int = 30, feature_dim: int = 1024, seed: int = 0
) -> int:
    """Bytes of a memory file holding ``classes`` x ``shots`` random references.

    Args:
        path: where to write the file.
        feature_dim: 1024 for DINOv2-L.
    """
    from refseg.memory import MemoryBank
    from refseg.models.base import EncoderIdentity

    identity = EncoderIdentity("facebook/dinov2-large", "random", 518, feature_dim)
    bank = MemoryBank(identity)
    generator = torch.Generator().manual_seed(seed)
    for class_index in range(classes):
        for shot in range(shots):
            feature = torch.randn(feature_dim, generator=generator)
            bank.add(feature, f"class_{class_index:02d}", {"file": f"train/{class_index:02d}_{shot:02d}.jpg"})
    return bank.save(path).stat().st_size
