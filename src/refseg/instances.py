"""The result container: one image's instances, with converters at the edges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .masks import masks_to_rles


@dataclass
class Instances:
    """Instances found on one image, best score first.

    Attributes:
        masks: (N, H, W) bool, at the original image size.
        boxes: (N, 4) float32 xyxy in original pixels, exclusive x2, y2 (a one-pixel mask at
            column 5 has x1 = 5, x2 = 6; :func:`refseg.masks.masks_to_boxes_exclusive`).
        scores: (N,) float32 in [0, 1].
        labels: (N,) int64 index into ``class_names``.
        class_names: names of all classes of the memory bank, indexed by ``labels``.
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if not (len(self.masks) == len(self.boxes) == len(self.labels) == n):
            raise ValueError("masks, boxes, scores and labels must have the same length")

    def __len__(self) -> int:
        return int(len(self.scores))

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image these instances belong to."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def names(self) -> list[str]:
        """Class name of each instance."""
        return [self.class_names[int(label)] for label in self.labels]

    @classmethod
    def empty(cls, height: int, width: int, class_names: Sequence[str] = ()) -> Instances:
        return cls(
            masks=np.zeros((0, height, width), dtype=bool),
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros((0,), dtype=np.float32),
            labels=np.zeros((0,), dtype=np.int64),
            class_names=list(class_names),
        )

    def __getitem__(self, index: slice | np.ndarray | Sequence[int]) -> Instances:
        if isinstance(index, int | np.integer):
            index = [int(index)]
        return Instances(
            masks=self.masks[index],
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=self.labels[index],
            class_names=list(self.class_names),
        )

    def filter(self, score_threshold: float) -> Instances:
        """Only the instances whose score is >= ``score_threshold``."""
        return self[np.nonzero(self.scores >= score_threshold)[0]]

    def to_coco(
        self,
        image_id: int,
        category_ids: Mapping[str, int] | Sequence[int] | None = None,
        box_convention: str = "exclusive",
    ) -> list[dict]:
        """COCO result dicts (what ``COCO.loadRes`` takes).

        Args:
            image_id: the image's id in the ground-truth file.
            category_ids: class name -> category id, or a sequence indexed by label. Default:
                label + 1.
            box_convention: ``"exclusive"``: bbox from the exclusive boxes (a one-pixel mask
                is 1 wide, as pycocotools' ``toBbox``); ``"inclusive"``: x2, y2 the last mask
                column / row, width x2 - x1, as the research code wrote the results the paper's
                bbox AP was computed on (``paper``: :attr:`refseg.presets.Preset.box_convention`).

        Returns:
            One dict per instance: image_id, category_id, bbox (x, y, w, h), score and
            segmentation (compressed RLE with a utf-8 ``counts`` string).
        """
        if box_convention not in ("exclusive", "inclusive"):
            raise ValueError(f"box_convention must be 'exclusive' or 'inclusive', not {box_convention!r}")
        shrink = 1.0 if box_convention == "inclusive" else 0.0
        results = []
        if len(self) == 0:
            return results
        for i, rle in enumerate(masks_to_rles(self.masks)):
            label = int(self.labels[i])
            if category_ids is None:
                category_id = label + 1
            elif isinstance(category_ids, Mapping):
                category_id = int(category_ids[self.class_names[label]])
            else:
                category_id = int(category_ids[label])
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": category_id,
                    "bbox": [x1, y1, x2 - shrink - x1, y2 - shrink - y1],
                    "score": float(self.scores[i]),
                    "segmentation": rle,
                }
            )
        return results

    def to_supervision(self):
        """A ``supervision.Detections`` (needs ``pip install "refseg[interop]"``)."""
        try:
            import supervision as sv
        except ImportError as error:
            from .errors import RefsegError

            raise RefsegError('supervision is not installed: pip install "refseg[interop]"') from error
        return sv.Detections(
            xyxy=self.boxes.astype(np.float32),
            mask=self.masks,
            confidence=self.scores.astype(np.float32),
            class_id=self.labels.astype(int),
            data={"class_name": np.array(self.names, dtype=object)},
        )
