"""The method's scoring and de-duplication steps (docs/method.md sections 3-5), each against
hand-computed answers, and the whole chain against a straightforward re-implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refseg import dedup, matching
from refseg.errors import EncoderMismatchError
from refseg.masks import masks_to_boxes_exclusive as exclusive_boxes
from refseg.masks import masks_to_boxes_inclusive

# ---------------------------------------------------------------------------- helpers


def rect_logits(m: int, rects: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """(N, m, m) logits: +1 inside rectangle (x1, y1, x2, y2 exclusive), -1 outside."""
    logits = -torch.ones((len(rects), m, m))
    for i, (x1, y1, x2, y2) in enumerate(rects):
        logits[i, y1:y2, x1:x2] = 1.0
    return logits


def unit(*values: float) -> torch.Tensor:
    vector = torch.tensor(values, dtype=torch.float32)
    return vector / vector.norm()


def blob_logits(generator: torch.Generator, n: int, m: int) -> torch.Tensor:
    """(n, m, m) smooth random logits: ellipses with low-frequency noise, some near-duplicates."""
    ys, xs = torch.meshgrid(
        torch.arange(m, dtype=torch.float32), torch.arange(m, dtype=torch.float32), indexing="ij"
    )
    logits = []
    base = None
    for i in range(n):
        if base is not None and i % 3 != 0:  # a perturbed copy of the previous base blob
            cx, cy, rx, ry = (
                v + float(d) for v, d in zip(base, torch.randn(4, generator=generator) * 1.5, strict=True)
            )
        else:
            cx, cy = (float(v) for v in torch.rand(2, generator=generator) * m)
            rx, ry = (float(v) for v in 2 + torch.rand(2, generator=generator) * m / 3)
            base = (cx, cy, rx, ry)
        noise = F.interpolate(torch.randn(1, 1, 4, 4, generator=generator), size=(m, m), mode="bicubic")[0, 0]
        logits.append(1 - ((xs - cx) / max(rx, 1.0)) ** 2 - ((ys - cy) / max(ry, 1.0)) ** 2 + 0.4 * noise)
    logits.append(-torch.ones(m, m))  # an empty proposal
    return torch.stack(logits)


# ---------------------------------------------------------------------------- grid


def test_point_grid_small_hand_computed():
    grid = matching.point_grid(2, image_size=4)
    expected = torch.tensor([[0.5, 0.5], [3.5, 0.5], [0.5, 3.5], [3.5, 3.5]])
    assert grid.dtype == torch.float32
    assert torch.equal(grid, expected)


def test_point_grid_paper():
    grid = matching.point_grid(32, 1024)
    assert grid.shape == (1024, 2)
    axis = torch.arange(32, dtype=torch.float32) * 33 + 0.5  # 1023 / 31 = 33
    assert torch.allclose(grid[:32, 0], axis)  # first row: x varies
    assert torch.all(grid[:32, 1] == 0.5)
    assert torch.allclose(grid[::32, 1], axis)  # first column: y varies
    assert grid[-1].tolist() == [1023.5, 1023.5]


# ---------------------------------------------------------------------------- pooling


def test_interpolation_matrix_matches_torch_resize():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(7, 5, generator=generator)
    rows = matching.interpolation_matrix(7, 23)
    cols = matching.interpolation_matrix(5, 18)
    expected = F.interpolate(image[None, None], size=(23, 18), mode="bilinear", align_corners=False)[0, 0]
    assert rows.shape == (23, 7) and cols.shape == (18, 5)
    assert torch.allclose(rows @ image @ cols.T, expected, atol=1e-6)


@pytest.mark.parametrize("mask_shape", [(24, 24), (20, 29)])
def test_pool_fast_equals_dense(mask_shape):
    generator = torch.Generator().manual_seed(1)
    feature_map = torch.randn(6, 7, 9, generator=generator)
    masks = torch.rand((10, *mask_shape), generator=generator) > 0.6
    masks[3] = False
    fast = matching.pool_object_features(feature_map, masks, method="fast")
    dense = matching.pool_object_features(feature_map, masks, method="dense")
    assert fast.shape == (10, 6)
    assert torch.allclose(fast, dense, atol=1e-5)
    assert torch.all(fast[3] == 0)  # empty mask -> zero feature
    norms = fast.norm(dim=1)
    assert torch.allclose(norms[torch.arange(10) != 3], torch.ones(9), atol=1e-5)


@pytest.mark.parametrize("method", ["fast", "dense"])
def test_pool_on_a_constant_region_gives_its_feature(method):
    left, right = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, -1.0, 2.0])
    feature_map = torch.empty(3, 8, 8)
    feature_map[:, :, :4] = left[:, None, None]
    feature_map[:, :, 4:] = right[:, None, None]
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 5:20, 0:12] = True  # upsampled columns 0-13 read feature columns 0-3 only
    masks[1, :, 20:] = True  # columns >= 18 read feature columns 4-7 only
    pooled = matching.pool_object_features(feature_map, masks, method=method)
    assert torch.allclose(pooled[0], torch.tensor([0.6, 0.8, 0.0]), atol=1e-6)
    assert torch.allclose(pooled[1], right / right.norm(), atol=1e-6)


def test_pool_rejects_unknown_method():
    with pytest.raises(ValueError, match="fast"):
        matching.pool_object_features(
            torch.zeros(2, 3, 3), torch.ones(1, 4, 4, dtype=torch.bool), method="slow"
        )


# ---------------------------------------------------------------------------- scoring


def test_score_clamps_at_zero_and_takes_argmax():
    features = torch.stack([unit(1, 0), unit(0, 1), unit(-1, 0), unit(0.6, 0.8), unit(1, 1), torch.zeros(2)])
    prototypes = torch.stack([unit(1, 0), unit(0, 1), unit(-1, -1)])
    scores, labels = matching.score_proposals(features, prototypes)
    half = math.sqrt(0.5)
    assert torch.allclose(scores, torch.tensor([1.0, 1.0, half, 0.8, half, 0.0]), atol=1e-6)
    # -(1, 0) is closest to -(1, 1); (1, 1) ties classes 0 and 1 -> the first; zero -> all 0 -> class 0
    assert labels.tolist() == [0, 1, 2, 1, 0, 0]
    assert labels.dtype == torch.int64


def test_score_all_negative_is_zero():
    scores, labels = matching.score_proposals(
        torch.stack([unit(-1, -1)]), torch.stack([unit(1, 0), unit(0, 1)])
    )
    assert scores.tolist() == [0.0] and labels.tolist() == [0]


def test_score_without_prototypes_and_mismatched_dimensions():
    scores, labels = matching.score_proposals(torch.ones(3, 4), torch.zeros(0, 4))
    assert scores.tolist() == [0.0, 0.0, 0.0] and labels.tolist() == [0, 0, 0]
    with pytest.raises(EncoderMismatchError, match="another encoder"):
        matching.score_proposals(torch.ones(3, 4), torch.ones(2, 5))


# ---------------------------------------------------------------------------- boxes and NMS


def test_masks_to_boxes_torchvision_convention():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 2, 3] = True
    masks[1, 1:4, 2:7] = True
    masks[1, 5, 0] = True
    boxes = masks_to_boxes_inclusive(masks)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[3, 2, 3, 2], [0, 1, 6, 5], [0, 0, 0, 0]]
    # the exclusive convention of Instances is the same box + 1 on x2, y2
    assert np.array_equal(
        exclusive_boxes(masks[:2].numpy()), (boxes[:2] + torch.tensor([0, 0, 1, 1])).numpy()
    )


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0, 4, 2], [0, 0, 10, 10], [5, 5, 5, 5]])
    b = torch.tensor([[0.0, 0, 4, 1], [20, 20, 30, 30], [1, 1, 11, 11], [5, 5, 5, 5]])
    iou = dedup.box_iou(a, b)
    assert iou.shape == (3, 4)
    assert iou[0, 0] == 0.5
    assert iou[1, 1] == 0
    assert torch.isclose(iou[1, 2], torch.tensor(81 / 119))
    assert iou[2, 3] == 0  # zero-area boxes: no overlap, never NaN
    assert not torch.isnan(iou).any()


def test_nms_ranked_by_ranking_and_classwise():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    ranking = torch.tensor([0.5, 0.9, 0.7])
    same = dedup.batched_nms(boxes, ranking, torch.tensor([0, 0, 0]), 0.5)
    assert same.tolist() == [1, 2]  # box 1 (better ranked) suppresses box 0 (IoU 0.68)
    different = dedup.batched_nms(boxes, ranking, torch.tensor([0, 1, 0]), 0.5)
    assert different.tolist() == [1, 2, 0]  # other class: nothing suppressed, ranking order


def test_nms_threshold_is_strict():
    boxes = torch.tensor([[0.0, 0, 4, 2], [0, 0, 4, 1]])  # IoU exactly 0.5
    labels = torch.zeros(2, dtype=torch.int64)
    ranking = torch.tensor([0.9, 0.8])
    assert dedup.batched_nms(boxes, ranking, labels, 0.5).tolist() == [0, 1]
    assert dedup.batched_nms(boxes, ranking, labels, 0.49).tolist() == [0]


def test_nms_only_kept_boxes_suppress():
    # b suppresses a (IoU 0.54); a would suppress d (0.54) but a is gone, and b-d is 0.25
    boxes = torch.tensor([[3.0, 0, 13, 10], [0, 0, 10, 10], [6, 0, 16, 10]])
    keep = dedup.batched_nms(boxes, torch.tensor([0.8, 0.9, 0.7]), torch.zeros(3, dtype=torch.int64), 0.5)
    assert keep.tolist() == [1, 2]


def test_nms_ties_keep_index_order_and_empty():
    boxes = torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10], [0, 0, 1, 1]])
    keep = dedup.batched_nms(boxes, torch.full((4,), 0.5), torch.zeros(4, dtype=torch.int64), 0.5)
    assert keep.tolist() == [0, 1, 2]  # index 3 duplicates index 0, which comes first
    empty = dedup.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


# ---------------------------------------------------------------------------- upsampling


def test_upsample_masks_matches_torch_and_chunks(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    logits = blob_logits(generator, 7, 16)
    expected = F.interpolate(logits[:, None], size=(37, 53), mode="bilinear", align_corners=False)[:, 0] > 0
    monkeypatch.setattr(dedup, "_UPSAMPLE_CHUNK_ELEMENTS", 3 * 37 * 53)  # chunks of 3 masks
    masks = dedup.upsample_masks(logits, (37, 53))
    assert masks.dtype == torch.bool and masks.shape == (8, 37, 53)
    assert torch.equal(masks, expected)
    cropped = dedup.upsample_masks_cropped(logits, (37, 53))
    assert torch.equal(cropped.to_dense(), expected)
    assert np.array_equal(cropped.boxes, exclusive_boxes(expected.numpy()).astype(np.int64))
    assert cropped.areas.tolist() == expected.sum(dim=(1, 2)).tolist()
    assert cropped.crops[-1].size == 0  # the empty proposal


# ---------------------------------------------------------------------------- soft merging


def soft_merge_dense(masks, features, labels, scores, exponent=0.5):
    """docs/method.md 5.5 written out over whole masks, pair by pair (test reference)."""
    new_scores = []
    for i in range(len(masks)):
        area = int(masks[i].sum())
        if area == 0:
            new_scores.append(0.0)
            continue
        decay = 0.0
        for j in range(i):
            if labels[j] == labels[i]:
                inter = int((masks[i] & masks[j]).sum())
                decay = max(decay, inter / area * max(0.0, float(features[i] @ features[j])))
        new_scores.append(float(scores[i]) * (1 - decay) ** exponent)
    return torch.tensor(new_scores)


def three_masks():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 0:8] = True  # 32 px
    masks[1, 0:8, 0:4] = True  # 32 px, shares 16 with mask 0
    masks[2, 2:6, 0:4] = True  # 16 px, shares 8 with mask 0 and all 16 with mask 1
    features = torch.stack(
        [unit(1, 0, 0), unit(0.6, 0.8, 0), torch.tensor([0.5, 0.3, math.sqrt(0.66)])]
    )  # f0.f1 = 0.6, f0.f2 = 0.5, f1.f2 = 0.54
    return masks, features


def test_soft_merge_three_masks_by_hand():
    masks, features = three_masks()
    labels = torch.zeros(3, dtype=torch.int64)
    scores = torch.tensor([0.9, 0.8, 0.7])
    merged = dedup.soft_merge(masks, features, labels, scores)
    # d0 = 0; d1 = 16/32 * 0.6 = 0.3; d2 = max(8/16 * 0.5, 16/16 * 0.54) = 0.54
    expected = torch.tensor([0.9, 0.8 * math.sqrt(0.7), 0.7 * math.sqrt(0.46)])
    assert torch.allclose(merged, expected, atol=1e-6)
    linear = dedup.soft_merge(masks, features, labels, scores, exponent=1.0)
    assert torch.allclose(linear, torch.tensor([0.9, 0.8 * 0.7, 0.7 * 0.46]), atol=1e-6)
    assert torch.allclose(merged, soft_merge_dense(masks, features, labels, scores), atol=1e-6)


def test_soft_merge_order_matters():
    masks, features = three_masks()
    order = torch.tensor([2, 1, 0])
    merged = dedup.soft_merge(masks[order], features[order], torch.zeros(3, dtype=torch.int64), torch.ones(3))
    # now mask 2 comes first: d = 0; mask 1: 16/32 * 0.54; mask 0: max(8/32 * 0.5, 16/32 * 0.6)
    expected = torch.tensor([1.0, math.sqrt(1 - 0.27), math.sqrt(1 - 0.3)])
    assert torch.allclose(merged, expected, atol=1e-6)


def test_soft_merge_other_classes_untouched():
    masks, features = three_masks()
    labels = torch.tensor([0, 1, 0])
    scores = torch.tensor([0.9, 0.8, 0.7])
    merged = dedup.soft_merge(masks, features, labels, scores)
    # mask 1 is alone in its class; mask 2 only sees mask 0: 8/16 * 0.5
    assert torch.allclose(merged, torch.tensor([0.9, 0.8, 0.7 * math.sqrt(0.75)]), atol=1e-6)


def test_soft_merge_negative_similarity_and_empty_mask():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, :3] = True  # overlaps mask 0, opposite feature: no decay, no boost
    features = torch.stack([unit(1, 0), unit(-1, 0.1), unit(1, 0)])
    merged = dedup.soft_merge(
        masks, features, torch.zeros(3, dtype=torch.int64), torch.tensor([0.5, 0.6, 0.7])
    )
    assert torch.allclose(merged, torch.tensor([0.5, 0.6, 0.0]))  # empty mask 2 -> 0


def test_soft_merge_equals_dense_reference_on_random_masks():
    generator = torch.Generator().manual_seed(3)
    logits = blob_logits(generator, 30, 24)
    masks = dedup.upsample_masks(logits, (40, 31))
    features = F.normalize(torch.randn(31, 5, generator=generator) + 1.5, dim=1)
    labels = torch.randint(0, 2, (31,), generator=generator)
    scores = torch.rand(31, generator=generator)
    merged = dedup.soft_merge(masks, features, labels, scores)
    reference = soft_merge_dense(masks, features, labels, scores)
    assert torch.allclose(merged, reference, atol=1e-6)
    assert (merged < scores - 1e-3).sum() > 5  # the example does merge


# ---------------------------------------------------------------------------- postprocess by hand


def test_postprocess_nms_ranks_by_predicted_iou_not_score():
    m = 16
    p0, q = unit(1, 0), unit(0, 1)
    feature_map = torch.empty(2, m, m)
    feature_map[:, :, :8] = p0[:, None, None]
    feature_map[:, :, 8:] = q[:, None, None]
    logits = rect_logits(m, [(0, 0, 8, 8), (2, 0, 10, 8)])  # box IoU 35/63 on the low-res grid
    result = matching.postprocess(logits, torch.tensor([0.8, 0.9]), feature_map, p0[None], (m, m))
    expected_score = 6 / math.sqrt(40)  # 6 columns of p0 and 2 of q: (6, 2) / |(6, 2)| . (1, 0)
    assert result.indices.tolist() == [1]  # higher predicted IoU wins although its score is lower
    assert torch.allclose(result.scores, torch.tensor([expected_score]), atol=1e-6)
    assert result.labels.tolist() == [0]
    assert result.boxes.tolist() == [[2.0, 0.0, 10.0, 8.0]]
    assert torch.equal(result.masks[0], logits[1] > 0)


def five_blocks():
    """Five disjoint 4x4 blocks, scores (0, .5, .9, .7, .95), predicted IoU decreasing."""
    m = 16
    rects = [(0, 0, 4, 4), (4, 0, 8, 4), (8, 0, 12, 4), (12, 0, 16, 4), (0, 8, 4, 12)]
    block_scores = [None, 0.5, 0.9, 0.7, 0.95]
    feature_map = torch.zeros(2, m, m)
    for (x1, y1, x2, y2), score in zip(rects, block_scores, strict=True):
        feature = unit(-1, 0) if score is None else torch.tensor([score, math.sqrt(1 - score**2)])
        feature_map[:, y1:y2, x1:x2] = feature[:, None, None]
    predicted_iou = torch.tensor([0.95, 0.9, 0.85, 0.8, 0.75])
    return rect_logits(m, rects), predicted_iou, feature_map, unit(1, 0)[None]


def test_postprocess_drops_score_zero_and_ranks_by_score():
    logits, predicted_iou, feature_map, prototypes = five_blocks()
    result = matching.postprocess(logits, predicted_iou, feature_map, prototypes, (16, 16))
    assert result.indices.tolist() == [4, 2, 3, 1]
    assert torch.allclose(result.scores, torch.tensor([0.95, 0.9, 0.7, 0.5]), atol=1e-6)


def test_postprocess_caps_candidates_in_nms_order_before_dropping_zero():
    logits, predicted_iou, feature_map, prototypes = five_blocks()
    result = matching.postprocess(logits, predicted_iou, feature_map, prototypes, (16, 16), max_candidates=3)
    # the first 3 by predicted IoU are 0 (score 0, then dropped), 1 and 2
    assert result.indices.tolist() == [2, 1]


def test_postprocess_top_k():
    logits, predicted_iou, feature_map, prototypes = five_blocks()
    result = matching.postprocess(logits, predicted_iou, feature_map, prototypes, (16, 16), max_instances=2)
    assert result.indices.tolist() == [4, 2]
    assert result.masks.shape == (2, 16, 16)


def test_postprocess_merges_in_nms_order():
    m = 8
    masks, _ = three_masks()
    logits = masks.float() * 2 - 1
    # one class and a constant 1-d feature map: every score and similarity is 1
    feature_map = torch.ones(1, m, m)
    arguments = (feature_map, torch.ones(1, 1), (m, m))
    in_index_order = matching.postprocess(
        logits, torch.tensor([0.9, 0.8, 0.7]), *arguments, nms_threshold=1.0, merge_exponent=1.0
    )
    # order 0, 1, 2: d1 = 16/32, d2 = max(8/16, 16/16) = 1
    assert in_index_order.indices.tolist() == [0, 1, 2]
    assert torch.allclose(in_index_order.scores, torch.tensor([1.0, 0.5, 0.0]), atol=1e-6)
    reversed_order = matching.postprocess(
        logits, torch.tensor([0.7, 0.8, 0.9]), *arguments, nms_threshold=1.0, merge_exponent=1.0
    )
    # NMS order 2, 1, 0: d1 = 16/32, d0 = max(8/32, 16/32); ties keep NMS order
    assert reversed_order.indices.tolist() == [2, 1, 0]
    assert torch.allclose(reversed_order.scores, torch.tensor([1.0, 0.5, 0.5]), atol=1e-6)


def test_postprocess_drops_masks_that_vanish_when_upsampled():
    logits = -10 * torch.ones(2, 16, 16)
    logits[0, 0, 0] = 1.0  # one low-res pixel: gone at 4x4 (output pixels sample rows 1.5, 5.5, ...)
    logits[1, 4:12, 4:12] = 10.0
    result = matching.postprocess(
        logits, torch.tensor([0.9, 0.8]), torch.ones(1, 4, 4), torch.ones(1, 1), (4, 4)
    )
    assert result.indices.tolist() == [1]
    assert result.masks.shape == (1, 4, 4) and result.masks[0].any()


def test_postprocess_boxes_exclusive_in_original_pixels():
    generator = torch.Generator().manual_seed(4)
    logits = blob_logits(generator, 9, 16)
    feature_map = torch.randn(3, 4, 4, generator=generator) + 2
    result = matching.postprocess(
        logits, torch.rand(10, generator=generator), feature_map, unit(1, 1, 1)[None], (45, 26)
    )
    assert len(result) > 0
    assert result.masks.shape[1:] == (45, 26)
    assert np.array_equal(result.boxes.numpy(), exclusive_boxes(result.masks.numpy()))


def test_postprocess_without_proposals():
    result = matching.postprocess(
        torch.zeros(0, 256, 256), torch.zeros(0), torch.zeros(8, 37, 37), torch.zeros(3, 8), (480, 640)
    )
    assert result.masks.shape == (0, 480, 640) and result.masks.dtype == torch.bool
    assert result.boxes.shape == (0, 4) and result.boxes.dtype == torch.float32
    assert result.scores.shape == (0,) and result.labels.shape == (0,) and result.labels.dtype == torch.int64
    assert len(result) == 0


# ---------------------------------------------------------------------------- against a re-implementation


def reference_postprocess(
    logits,
    predicted_iou,
    feature_map,
    prototypes,
    size,
    nms_threshold,
    max_candidates,
    merge_exponent,
    max_instances,
):
    """docs/method.md 4.2-5.6 written out directly: dense upsampled features, loops, whole masks."""
    n, m, _ = logits.shape
    binary = logits > 0
    upsampled = F.interpolate(feature_map[None], size=(m, m), mode="bilinear", align_corners=False)[0]
    features = []
    for i in range(n):
        inside = upsampled[:, binary[i]]
        mean = inside.mean(dim=1) if inside.shape[1] else torch.zeros(feature_map.shape[0])
        features.append(mean / mean.norm() if mean.norm() > 0 else mean)
    features = torch.stack(features)
    similarity = (features @ prototypes.T).clamp(min=0)
    scores, labels = similarity.max(dim=1)

    boxes = []
    for i in range(n):
        ys, xs = torch.nonzero(binary[i], as_tuple=True)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max()) if len(xs) else (0, 0, 0, 0))
    boxes = [tuple(int(v) for v in box) for box in boxes]

    def iou(a, b):
        iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union if union > 0 else 0.0

    order = sorted(range(n), key=lambda i: (-float(predicted_iou[i]), i))
    kept = []
    for i in order:
        if all(labels[k] != labels[i] or iou(boxes[i], boxes[k]) <= nms_threshold for k in kept):
            kept.append(i)
    kept = [i for i in kept[:max_candidates] if scores[i] > 0]
    # antialiased, as the research code (docs/fidelity.md D14): a downsampling where a side < 256
    full = F.interpolate(
        logits[kept][:, None], size=size, mode="bilinear", align_corners=False, antialias=True
    )
    full = full[:, 0] > 0
    nonempty = [a for a in range(len(kept)) if full[a].any()]
    kept = [kept[a] for a in nonempty]
    full = full[nonempty]
    merged = soft_merge_dense(full, features[kept], labels[kept], scores[kept], merge_exponent)
    top = sorted(range(len(kept)), key=lambda a: -float(merged[a]))[:max_instances]
    return [kept[a] for a in top], merged[top], full[top]


@pytest.mark.parametrize(
    ("seed", "size", "pool", "nms_threshold", "max_candidates", "max_instances"),
    [
        (10, (50, 38), "fast", 0.5, 800, 100),
        (11, (21, 30), "dense", 0.5, 800, 100),
        (12, (64, 64), "fast", 0.3, 12, 100),
        (13, (33, 47), "fast", 0.7, 800, 7),
    ],
)
def test_postprocess_equals_reference(seed, size, pool, nms_threshold, max_candidates, max_instances):
    generator = torch.Generator().manual_seed(seed)
    logits = blob_logits(generator, 45, 32)
    n = logits.shape[0]
    predicted_iou = 0.4 + 0.6 * torch.rand(n, generator=generator)
    feature_map = torch.randn(6, 5, 5, generator=generator) + torch.randn(6, 1, 1, generator=generator)
    prototypes = F.normalize(torch.randn(3, 6, generator=generator) + feature_map.mean(dim=(1, 2)), dim=1)
    result = matching.postprocess(
        logits,
        predicted_iou,
        feature_map,
        prototypes,
        size,
        nms_threshold=nms_threshold,
        max_candidates=max_candidates,
        max_instances=max_instances,
        pool=pool,
    )
    indices, scores, masks = reference_postprocess(
        logits,
        predicted_iou,
        feature_map,
        prototypes,
        size,
        nms_threshold,
        max_candidates,
        0.5,
        max_instances,
    )
    assert len(indices) >= 3
    assert result.indices.tolist() == indices
    assert torch.allclose(result.scores, scores, atol=1e-5)
    assert torch.equal(result.masks, masks)
    assert np.array_equal(result.boxes.numpy(), exclusive_boxes(masks.numpy()))


# ---------------------------------------------------------------------------- negative examples


def examples_of(positives, positive_labels, negatives=(), negative_labels=()) -> matching.ReferenceExamples:
    dim = len(positives[0])

    def stack(vectors):
        return torch.stack([unit(*v) for v in vectors]) if vectors else torch.zeros((0, dim))

    return matching.ReferenceExamples(
        stack(positives),
        torch.tensor(positive_labels, dtype=torch.int64),
        stack(negatives),
        torch.tensor(negative_labels, dtype=torch.int64),
    )


def test_nearest_example_vetoes_by_hand():
    # class 0 has two looks (e1, e2) and a negative between them; class 1 is e3; a background
    # negative points to -e1.
    examples = examples_of([(1, 0, 0), (0, 1, 0), (0, 0, 1)], [0, 0, 1], [(1, 1, 0), (-1, 0, 0)], [0, -1])
    features = torch.stack(
        [
            unit(1, 0, 0),  # a look of class 0: its own positive is nearer than the negative
            unit(1, 1, 0),  # the lookalike: its nearest class-0 example is the negative
            unit(0, 0, 1),  # class 1; for class 0 the best of each side ties (0 = 0): no veto
            unit(-1, 0, 0.1),  # like the background negative: vetoed for both classes
            torch.zeros(3),  # an empty mask's feature: never vetoed
        ]
    )
    vetoed = matching.nearest_example_vetoes(features, examples, 2)
    assert vetoed.tolist() == [[False, False], [True, False], [False, False], [True, True], [False, False]]
    # Without negatives nothing is vetoed; a class's negatives never veto another class.
    assert not matching.nearest_example_vetoes(features, examples_of([(1, 0, 0), (0, 0, 1)], [0, 1]), 2).any()
    only_class_0 = examples_of([(1, 0, 0), (0, 0, 1)], [0, 1], [(0, 0, 1)], [0])
    assert matching.nearest_example_vetoes(features, only_class_0, 2)[:, 1].tolist() == [False] * 5


def test_the_nearest_positive_not_the_prototype_decides():
    """A class with two looks (e1, e2) has its prototype between them. A true instance of one look
    is farther from the prototype than from a negative example of a look-alike, but nearer to
    its own look: compared with the prototype it would be vetoed; the rule keeps it, and vetoes
    the look-alike."""
    examples = examples_of([(1, 0, 0), (0, 1, 0)], [0, 0], [(1, 0.6, 0)], [0])
    instance, lookalike = unit(1, 0.1, 0), unit(1, 0.6, 0)
    prototype = unit(1, 1, 0)
    negative = unit(1, 0.6, 0)
    assert float(instance @ negative) > float(instance @ prototype)  # a prototype rule would veto it
    vetoed = matching.nearest_example_vetoes(torch.stack([instance, lookalike]), examples, 1)
    assert vetoed.tolist() == [[False], [True]]


def test_nearest_example_vetoes_equal_a_straightforward_loop():
    generator = torch.Generator().manual_seed(5)
    classes, dim = 4, 6
    features = F.normalize(torch.randn(30, dim, generator=generator), dim=1)
    positive_labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    negative_labels = torch.tensor([0, 2, 2, -1, -1])
    examples = matching.ReferenceExamples(
        torch.randn(len(positive_labels), dim, generator=generator) * 3,  # any norm
        positive_labels,
        torch.randn(len(negative_labels), dim, generator=generator),
        negative_labels,
    )
    vetoed = matching.nearest_example_vetoes(features, examples, classes)
    positives = F.normalize(examples.positive_features, dim=1)
    negatives = F.normalize(examples.negative_features, dim=1)
    for i in range(len(features)):
        for c in range(classes):
            best_positive = max(
                float(features[i] @ p) for p, k in zip(positives, positive_labels, strict=True) if k == c
            )
            against = [
                float(features[i] @ n)
                for n, k in zip(negatives, negative_labels, strict=True)
                if k in (c, -1)
            ]
            assert bool(vetoed[i, c]) == (max(against, default=-math.inf) > best_positive)
    assert vetoed.any() and not vetoed.all()


def test_score_proposals_with_vetoes_takes_the_best_class_left():
    features = torch.stack([unit(1, 0.5), unit(1, 0.5), unit(1, 0.5)])
    prototypes = torch.stack([unit(1, 0), unit(0, 1)])
    vetoed = torch.tensor([[False, False], [True, False], [True, True]])
    scores, labels = matching.score_proposals(features, prototypes, vetoed)
    plain_scores, plain_labels = matching.score_proposals(features, prototypes)
    assert labels.tolist() == [0, 1, 0] and plain_labels.tolist() == [0, 0, 0]
    assert torch.allclose(scores, torch.tensor([float(unit(1, 0.5)[0]), float(unit(1, 0.5)[1]), 0.0]))
    assert torch.equal(scores[0], plain_scores[0])


def test_postprocess_drops_a_proposal_vetoed_for_every_class_before_nms():
    """The vetoed proposal has the higher predicted IoU and overlaps the real one: without the
    veto it wins NMS (the paper's ranking), with it the real one is found."""
    m = 16
    p0, wall = unit(1, 0), unit(0, 1)
    feature_map = torch.empty(2, m, m)
    feature_map[:, :, :8] = p0[:, None, None]
    feature_map[:, :, 8:] = wall[:, None, None]
    logits = rect_logits(m, [(2, 0, 8, 8), (2, 0, 10, 8)])  # box IoU 48/64: one suppresses the other
    arguments = (logits, torch.tensor([0.8, 0.9]), feature_map, p0[None], (m, m))
    paper = matching.postprocess(*arguments)
    assert paper.indices.tolist() == [1]
    no_negatives = matching.postprocess(*arguments, examples=examples_of([(1, 0)], [0]))
    for name in ("indices", "scores", "labels", "boxes", "masks"):
        assert torch.equal(getattr(no_negatives, name), getattr(paper, name))
    # The "not this" example is the overlapping proposal itself (6 columns of p0, 2 of wall).
    for label in (0, -1):  # a negative of the class, or a background one
        vetoed = matching.postprocess(*arguments, examples=examples_of([(1, 0)], [0], [(6, 2)], [label]))
        assert vetoed.indices.tolist() == [0]
        assert torch.allclose(vetoed.scores, torch.tensor([1.0]))


def test_presets_with_negatives():
    from refseg import FAST, PAPER, PAPER_NEG, get_preset

    assert not PAPER.negatives and FAST.negatives
    assert get_preset("paper-neg") == PAPER_NEG == PAPER.replace(name="paper-neg", negatives=True)
