"""Synthetic scenes whose right answer is known, and models that see them.

A scene is a grey noisy background with textured discs and squares; each class has its own
colour. :class:`SyntheticEncoder` maps each patch's mean colour to a feature that encodes the
class (a soft one-hot over the palette; with ``lookalikes``, a :data:`LOOKALIKES` colour is seen
as a mix of classes), and :class:`SyntheticProposer` finds the objects
in the image itself (connected components of non-background pixels: its "embedding") and
returns them as SAM2 would, plus the usual noise: a duplicate of each object, a fragment of
each object, a low-quality proposal below the IoU threshold and background distractors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from refseg.models.base import EncoderIdentity, Proposals

BACKGROUND = (128, 128, 128)
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
}
#: Colours that are no class but that ``SyntheticEncoder(lookalikes=True)`` sees as the mean of
#: classes: "purple" looks like red and blue alike, so it is nearer to the prototype of a class
#: made of red and blue examples than those examples are (the distractor of the negative-example
#: tests).
LOOKALIKES = {"purple": ((120, 20, 140), ("red", "blue"))}
COLOURS = {**PALETTE, **{name: colour for name, (colour, _) in LOOKALIKES.items()}}


@dataclass
class Scene:
    """One synthetic image with its ground truth."""

    image: np.ndarray  # (H, W, 3) uint8
    masks: list[np.ndarray] = field(default_factory=list)  # (H, W) bool each
    classes: list[str] = field(default_factory=list)


def make_scene(
    seed: int,
    classes: tuple[str, ...] = ("red", "green", "blue"),
    size: tuple[int, int] = (256, 256),
    per_class: int = 2,
    radius: tuple[int, int] = (14, 26),
) -> Scene:
    """A scene with ``per_class`` non-overlapping objects of each class."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = np.clip(rng.normal(BACKGROUND[0], 6, size=(height, width, 3)), 0, 255)
    yy, xx = np.mgrid[0:height, 0:width]
    occupied = np.zeros((height, width), dtype=bool)
    scene = Scene(image=image)
    for class_name in classes:
        for _ in range(per_class):
            for _attempt in range(200):
                r = int(rng.integers(*radius))
                cx = int(rng.integers(r + 3, width - r - 3))
                cy = int(rng.integers(r + 3, height - r - 3))
                if rng.random() < 0.5:
                    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                else:
                    mask = (abs(xx - cx) <= r * 0.8) & (abs(yy - cy) <= r * 0.8)
                grown = F.max_pool2d(torch.from_numpy(mask)[None, None].float(), 9, 1, 4)[0, 0].numpy() > 0
                if not (grown & occupied).any():
                    break
            else:
                raise RuntimeError("could not place an object; make the scene larger")
            occupied |= mask
            stripes = 12.0 * np.sin((xx + yy) / 3.0 + rng.random() * 6)
            colour = np.array(COLOURS[class_name], dtype=np.float64)
            image[mask] = np.clip(colour + stripes[mask][:, None], 0, 255)
            scene.masks.append(mask)
            scene.classes.append(class_name)
    scene.image = image.round().astype(np.uint8)
    return scene


class SyntheticEncoder:
    """Patch features that encode the class: soft one-hot of the patch colour over the palette.

    With ``lookalikes``, a :data:`LOOKALIKES` colour's feature is the normalised sum of the
    one-hots of the classes it looks like (the feature size does not change)."""

    def __init__(
        self, input_size: int = 518, patch_size: int = 14, sigma: float = 45.0, lookalikes: bool = False
    ) -> None:
        self.patch_size = patch_size
        self.sigma = sigma
        colours = [BACKGROUND, *PALETTE.values()]
        self.basis = None  # (colours, len(colours) of the palette): the feature of each colour
        if lookalikes:
            names = ["background", *PALETTE]
            basis = torch.eye(len(colours))
            for colour, looks_like in LOOKALIKES.values():
                colours.append(colour)
                mix = sum(basis[names.index(name)] for name in looks_like)
                basis = torch.cat([basis, (mix / mix.norm())[None]])
            self.basis = basis
        self.colours = torch.tensor(colours, dtype=torch.float32)  # (P, 3)
        self.identity = EncoderIdentity("synthetic-colour", "1", input_size, len(PALETTE) + 1 + 3)
        self.calls = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, C, S/p, S/p)."""
        self.calls += 1
        assert images.shape[-1] == self.identity.input_size
        means = F.avg_pool2d(images.float() * 255.0, self.patch_size)  # (B, 3, h, w)
        distance = ((means.unsqueeze(1) - self.colours[None, :, :, None, None]) ** 2).sum(2)  # (B, P, h, w)
        soft = torch.exp(-distance / (2 * self.sigma**2))
        if self.basis is not None:
            soft = torch.einsum("bphw,pc->bchw", soft, self.basis)
        padding = torch.zeros((soft.shape[0], 3, *soft.shape[2:]))
        return torch.cat([soft, padding], dim=1)


def connected_components(foreground: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a bool image, largest label propagation; (H, W) bool each."""
    height, width = foreground.shape
    fg = torch.from_numpy(foreground)
    labels = torch.where(fg, torch.arange(1, height * width + 1).reshape(height, width).float(), 0.0)
    while True:
        padded = F.pad(labels[None, None], (1, 1, 1, 1))[0, 0]
        neighbours = torch.stack(
            [labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        ).amax(0)
        updated = torch.where(fg, neighbours, 0.0)
        if torch.equal(updated, labels):
            break
        labels = updated
    return [(labels == value).numpy() for value in torch.unique(labels) if value > 0]


@dataclass
class SyntheticEmbedding:
    """What :meth:`SyntheticProposer.embed` sees in a picture: its objects on the low-res grid."""

    objects: list[np.ndarray]  # (m, m) bool each


class SyntheticProposer:
    """Finds the scene's objects in the image and proposes them like SAM2 would, with noise.

    Implements the :class:`refseg.models.base.Proposer` seam; counts its calls."""

    def __init__(self, image_size: int = 1024, low_res: int = 256, min_area: int = 20) -> None:
        self.image_size = image_size
        self.low_res = low_res
        self.min_area = min_area
        self.last_points: torch.Tensor | None = None
        self.embed_calls = 0
        self.box_calls = 0

    def _objects(self, image: torch.Tensor) -> list[np.ndarray]:
        pooled = F.adaptive_avg_pool2d(image[None].float() * 255.0, self.low_res)[0]  # (3, m, m)
        background = torch.tensor(BACKGROUND, dtype=torch.float32)[:, None, None]
        foreground = ((pooled - background) ** 2).sum(0).sqrt() > 40.0
        return [m for m in connected_components(foreground.numpy()) if m.sum() >= self.min_area]

    def embed(self, image: torch.Tensor, *, no_memory_embedding: bool = True) -> SyntheticEmbedding:
        self.embed_calls += 1
        return SyntheticEmbedding(self._objects(image))

    def decode_points(
        self, embedding: SyntheticEmbedding, points: torch.Tensor, *, batch_size: int, iou_threshold: float
    ) -> Proposals:
        self.last_points = points
        masks, ious = [], []
        for k, obj in enumerate(embedding.objects):
            ys, xs = np.nonzero(obj)
            fragment = obj & (xs.mean() >= np.arange(obj.shape[1]))[None, :]
            grown = F.max_pool2d(torch.from_numpy(obj)[None, None].float(), 3, 1, 1)[0, 0].numpy() > 0
            masks += [obj, grown, fragment, obj]
            ious += [0.95 - 0.001 * k, 0.85, 0.7, 0.3]  # the last one is below the threshold
        m = self.low_res
        for y0, x0 in ((2, 2), (m - 20, 2)):  # background distractors in the corners
            distractor = np.zeros((m, m), dtype=bool)
            distractor[y0 : y0 + 16, x0 : x0 + 16] = True
            masks.append(distractor)
            ious.append(0.9)
        logits = torch.from_numpy(np.stack(masks)).float() * 16.0 - 8.0
        predicted_iou = torch.tensor(ious, dtype=torch.float32)
        keep = predicted_iou > iou_threshold
        centre = torch.full((len(masks), 2), self.image_size / 2.0)
        return Proposals(logits[keep], predicted_iou[keep], centre[keep])

    def decode_boxes(self, embedding: SyntheticEmbedding, boxes: torch.Tensor) -> torch.Tensor:
        """The object whose box centre is inside the prompt box, as logits."""
        self.box_calls += 1
        scale = self.low_res / self.image_size
        out = torch.full((len(boxes), self.low_res, self.low_res), -8.0)
        for i, (x1, y1, x2, y2) in enumerate((boxes * scale).tolist()):
            for obj in embedding.objects:
                ys, xs = np.nonzero(obj)
                if x1 <= xs.mean() <= x2 and y1 <= ys.mean() <= y2:
                    out[i][torch.from_numpy(obj)] = 8.0
                    break
        return out

    def decode_prompts(
        self,
        embedding: SyntheticEmbedding,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        box: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float]:
        """The first object under a positive point (or, without one, with its box centre in
        the box) and under no negative point, as logits; predicted IoU 0.9 (0.0 for none)."""
        scale = self.low_res / self.image_size
        positive: list[tuple[int, int]] = []
        negative: list[tuple[int, int]] = []
        if points is not None:
            labels = torch.ones(len(points)) if labels is None else labels
            for (x, y), label in zip((points * scale).tolist(), labels.tolist(), strict=True):
                cell = (min(int(y), self.low_res - 1), min(int(x), self.low_res - 1))
                (positive if label == 1 else negative).append(cell)
        logits = torch.full((self.low_res, self.low_res), -8.0)
        for obj in embedding.objects:
            if any(obj[cell] for cell in negative):
                continue
            if positive:
                found = all(obj[cell] for cell in positive)
            else:
                ys, xs = np.nonzero(obj)
                x1, y1, x2, y2 = (box * scale).tolist()
                found = x1 <= xs.mean() <= x2 and y1 <= ys.mean() <= y2
            if found:
                logits[torch.from_numpy(obj)] = 8.0
                return logits, 0.9
        return logits, 0.0


def scene_ground_truth(scenes: list[Scene], class_names: list[str]) -> dict:
    """A COCO ground-truth dict for scenes (image ids 1..n, category id = class index + 1)."""
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=1):
        height, width = scene.image.shape[:2]
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.png"})
        for mask, class_name in zip(scene.masks, scene.classes, strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_names.index(class_name) + 1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_ap(gt: dict, results: list[dict]) -> dict[str, float]:
    """pycocotools' AP@[.5:.95] of ``results`` against ``gt``, for bbox and segm (quietly)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        stats = {}
        for iou_type in ("bbox", "segm"):
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats[iou_type] = float(evaluator.stats[0])
    return stats
