"""The memory bank: one feature per reference, class prototypes, one safetensors file.

METHOD.md section 1. Per reference: a square context crop around the instance box, resized
to the encoder input, encoded, and the patch features averaged with the (soft) mask as
weights. A class prototype is the L2-normalised mean of its references' features, each
reference counting the same whatever its size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import EncoderMismatchError, InvalidInputError
from .files import atomic_write
from .masks import mask_box_exclusive
from .models.base import Encoder, EncoderIdentity
from .preprocess import image_to_tensor

logger = logging.getLogger(__name__)

FORMAT_NAME = "refseg.memory"
FORMAT_VERSION = 1  # context_ratio (added after 0.1.0) is optional metadata: still version 1

#: The context ratio of a file that records none: refseg 0.1.0 wrote none, and 0.2 was its default.
ASSUMED_CONTEXT_RATIO = 0.2


# --------------------------------------------------------------------------- geometry


def context_crop_box(
    box: Sequence[float], image_hw: tuple[int, int], context_ratio: float = 0.2
) -> tuple[int, int, int, int]:
    """The reference crop: a square centred on the box, clipped to the image.

    Side = (1 + context_ratio) x max(box width, box height). Bounds are truncated to integers
    (``floor`` of the low edge, ``ceil`` of the high edge, so the box always lies inside), then
    clipped to the image: at a border the crop is not square.

    Args:
        box: (x1, y1, x2, y2) in original pixels.
        image_hw: (height, width) of the image.

    Returns:
        (x0, y0, x1, y1) integer crop bounds, exclusive x1, y1.
    """
    height, width = image_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = (1.0 + context_ratio) * max(x2 - x1, y2 - y1)
    half = side / 2.0
    x0 = max(0, math.floor(cx - half))
    y0 = max(0, math.floor(cy - half))
    xe = min(width, math.ceil(cx + half))
    ye = min(height, math.ceil(cy + half))
    if xe <= x0 or ye <= y0:
        raise InvalidInputError(f"The reference box {list(box)} lies outside the {width}x{height} image.")
    return x0, y0, xe, ye


def reference_inputs(
    image: np.ndarray, mask: np.ndarray, input_size: int, context_ratio: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder input and soft mask of one reference (METHOD.md 1.1-1.3).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool instance mask.
        input_size: encoder input side S.

    Returns:
        crop: (3, S, S) float32 in [0, 1], bicubic resize of the context crop.
        soft_mask: (S, S) float32 in [0, 1], bilinear resize of the cropped mask.
    """
    if mask.shape != image.shape[:2]:
        raise InvalidInputError(f"Mask shape {mask.shape} does not match image shape {image.shape[:2]}.")
    x0, y0, x1, y1 = context_crop_box(mask_box_exclusive(mask), image.shape[:2], context_ratio)
    crop = image_to_tensor(image[y0:y1, x0:x1])
    crop = F.interpolate(crop, size=(input_size, input_size), mode="bicubic", align_corners=False)
    crop_mask = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1])).float()[None, None]
    soft_mask = F.interpolate(crop_mask, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return crop[0].clamp_(0.0, 1.0), soft_mask[0, 0]


def pool_reference(features: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean of patch features (METHOD.md 1.5-1.6).

    Weights are the soft mask sampled to the patch grid by nearest neighbour. If no patch
    gets weight (an object smaller than a patch), the features are upsampled bilinearly to
    the mask's resolution and pooled there instead: a documented departure that only applies
    where the paper's formula would divide by zero.

    Args:
        features: (C, h, w) patch features.
        soft_mask: (S, S) soft mask in [0, 1].

    Returns:
        (C,) reference feature (not normalised).
    """
    channels, h, w = features.shape
    weights = F.interpolate(soft_mask[None, None], size=(h, w), mode="nearest")[0, 0]
    total = weights.sum()
    if total <= 0:
        total = soft_mask.sum()
        if total <= 0:
            raise InvalidInputError("The reference mask vanished after cropping and resizing.")
        logger.info("reference smaller than one patch: pooled at %dx%d instead", *soft_mask.shape)
        dense = F.interpolate(features[None], size=soft_mask.shape, mode="bilinear", align_corners=False)[0]
        return (dense * soft_mask).sum(dim=(1, 2)) / total
    return (features * weights).sum(dim=(1, 2)) / total


def reference_feature(
    encoder: Encoder, image: np.ndarray, mask: np.ndarray, context_ratio: float = 0.2
) -> torch.Tensor:
    """One reference's feature (METHOD.md section 1, steps 1-6).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool.

    Returns:
        (C,) float32 feature, not normalised.
    """
    crop, soft_mask = reference_inputs(image, mask, encoder.identity.input_size, context_ratio)
    with torch.inference_mode():
        features = encoder.encode(crop[None])[0].float().cpu()
    return pool_reference(features, soft_mask)


# --------------------------------------------------------------------------- the bank


@dataclass
class ReferenceRecord:
    """What the bank remembers of one reference besides its feature."""

    ref_id: int
    class_name: str
    source: dict = field(default_factory=dict)


class MemoryBank:
    """Per-reference features and class prototypes.

    Classes keep the order in which they were first added; a label ``k`` in results is the
    index into :attr:`class_names`.

    The bank records the settings that shaped its features: the encoder (:attr:`encoder`, with
    its input size) and the reference crop's :attr:`context_ratio`. All references of a bank
    share one context ratio: an empty bank takes the ratio of its first reference, and adding
    one made with another ratio raises :class:`InvalidInputError` (its feature would not be
    comparable). Readers (``memory show``, the app's memory picture) crop with the bank's ratio.

    Attributes:
        encoder: identity of the encoder that made the features.
        context_ratio: the references' crop margin (side = (1 + ratio) x the box's longer side).
        context_ratio_assumed: True for a file that records no ratio (refseg 0.1.0): the ratio
            is then :data:`ASSUMED_CONTEXT_RATIO`, 0.1.0's default.
    """

    def __init__(self, encoder: EncoderIdentity, context_ratio: float = ASSUMED_CONTEXT_RATIO) -> None:
        self.encoder = encoder
        self.context_ratio = float(context_ratio)
        self.context_ratio_assumed = False
        self._features: list[torch.Tensor] = []
        self._records: list[ReferenceRecord] = []
        self._classes: list[str] = []
        self._category_ids: dict[str, int] = {}
        self._next_id = 0

    # ---- contents

    @property
    def class_names(self) -> list[str]:
        return list(self._classes)

    @property
    def references(self) -> list[ReferenceRecord]:
        return list(self._records)

    @property
    def reference_features(self) -> torch.Tensor:
        """(R, C) float32 features, in reference order."""
        if not self._features:
            return torch.zeros((0, self.encoder.feature_dim))
        return torch.stack(self._features)

    @property
    def category_ids(self) -> dict[str, int]:
        """Class name -> category id (the data set's, or 1-based class order by default)."""
        return {name: self._category_ids.get(name, index + 1) for index, name in enumerate(self._classes)}

    def __len__(self) -> int:
        return len(self._records)

    def counts(self) -> dict[str, int]:
        """References per class, in class order."""
        counts = dict.fromkeys(self._classes, 0)
        for record in self._records:
            counts[record.class_name] += 1
        return counts

    def prototypes(self) -> torch.Tensor:
        """(K, C) L2-normalised class prototypes in :attr:`class_names` order (METHOD.md 1.7)."""
        if not self._classes:
            raise InvalidInputError("The memory bank is empty: add at least one reference first.")
        features = self.reference_features
        labels = torch.tensor([self._classes.index(r.class_name) for r in self._records])
        sums = torch.zeros((len(self._classes), features.shape[1]), dtype=features.dtype)
        sums.index_add_(0, labels, features)
        means = sums / torch.bincount(labels, minlength=len(self._classes)).unsqueeze(1).to(features.dtype)
        return F.normalize(means, dim=1)

    def fingerprint(self) -> str:
        """sha256 of what predictions depend on: features, their classes, class order, category ids.

        Equal for the same bank in any file (or none); a resume compares it
        (:func:`refseg.partials.run_key`).
        """
        digest = hashlib.sha256()
        digest.update(self.reference_features.contiguous().numpy().astype("<f4").tobytes())
        described = {
            "classes": self._classes,
            "reference_classes": [r.class_name for r in self._records],
            "category_ids": self.category_ids,
        }
        digest.update(json.dumps(described, sort_keys=True).encode("utf-8"))
        return digest.hexdigest()

    # ---- editing

    def add(
        self,
        feature: torch.Tensor,
        class_name: str,
        source: dict | None = None,
        *,
        context_ratio: float | None = None,
    ) -> int:
        """Add one reference feature (C,). Returns its reference id.

        Args:
            context_ratio: the crop margin the feature was made with. An empty bank takes it;
                a non-empty bank refuses another one. None: the bank's (not checked).

        Raises:
            InvalidInputError: wrong feature size, a non-finite feature, or a context ratio other
                than the bank's.
        """
        class_name = _check_class_name(class_name)
        if context_ratio is not None:
            self._take_context_ratio(float(context_ratio))
        feature = feature.detach().float().cpu().reshape(-1)
        if feature.shape[0] != self.encoder.feature_dim:
            raise InvalidInputError(
                f"Feature size {feature.shape[0]} does not match the bank's encoder ({self.encoder.feature_dim})."
            )
        if not torch.isfinite(feature).all():
            raise InvalidInputError(f"The reference feature for {class_name!r} is not finite.")
        if class_name not in self._classes:
            self._classes.append(class_name)
        ref_id = self._next_id
        self._next_id += 1
        self._features.append(feature)
        self._records.append(ReferenceRecord(ref_id, class_name, dict(source or {})))
        return ref_id

    def _take_context_ratio(self, ratio: float) -> None:
        if not self._records:
            self.context_ratio, self.context_ratio_assumed = ratio, False
        elif not math.isclose(ratio, self.context_ratio, rel_tol=0.0, abs_tol=1e-9):
            assumed = " (assumed: the file does not record it)" if self.context_ratio_assumed else ""
            raise InvalidInputError(
                f"This memory bank's references were cropped with context ratio {self.context_ratio}"
                f"{assumed}, this reference with {ratio}: one bank holds one ratio. Add it with "
                f"context_ratio={self.context_ratio} (--context-ratio {self.context_ratio}), or build a new memory."
            )

    def set_category_id(self, class_name: str, category_id: int) -> None:
        if class_name not in self._classes:
            raise InvalidInputError(f"Unknown class {class_name!r}; the bank holds: {self._classes}.")
        self._category_ids[class_name] = int(category_id)

    def remove_reference(self, ref_id: int) -> None:
        """Remove one reference; its class goes too if it was the last one."""
        for index, record in enumerate(self._records):
            if record.ref_id == ref_id:
                del self._records[index]
                del self._features[index]
                if not any(r.class_name == record.class_name for r in self._records):
                    self._classes.remove(record.class_name)
                    self._category_ids.pop(record.class_name, None)
                return
        raise InvalidInputError(f"No reference with id {ref_id} in the memory bank.")

    def remove_class(self, class_name: str) -> None:
        """Remove a class and all its references."""
        if class_name not in self._classes:
            raise InvalidInputError(f"Unknown class {class_name!r}; the bank holds: {self._classes}.")
        keep = [i for i, r in enumerate(self._records) if r.class_name != class_name]
        self._records = [self._records[i] for i in keep]
        self._features = [self._features[i] for i in keep]
        self._classes.remove(class_name)
        self._category_ids.pop(class_name, None)

    def check_encoder(self, identity: EncoderIdentity) -> None:
        """Raise EncoderMismatchError if features of ``identity`` cannot be matched with this bank."""
        reason = self.encoder.mismatch(identity)
        if reason is not None:
            raise EncoderMismatchError(
                f"This memory bank was built with encoder {self.encoder.name!r} "
                f"(input {self.encoder.input_size}) but the segmenter uses {identity.name!r} "
                f"(input {identity.input_size}): {reason}. Rebuild the memory with this encoder, or pass "
                f"the bank's encoder (--encoder / encoder=...)."
            )

    # ---- file

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank to ONE safetensors file (features + json metadata). Returns the path."""
        from . import __version__

        path = Path(path)
        counts = self.counts()
        classes = [
            {"name": name, "category_id": self.category_ids[name], "references": counts[name]}
            for name in self._classes
        ]
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "refseg_version": __version__,
            "encoder": json.dumps(self.encoder.as_dict()),
            "classes": json.dumps(classes),
            "references": json.dumps(
                [{"ref_id": r.ref_id, "class": r.class_name, "source": r.source} for r in self._records]
            ),
            "next_id": str(self._next_id),
        }
        if not self.context_ratio_assumed:  # an assumed ratio stays unrecorded: it was never known
            metadata["context_ratio"] = json.dumps(self.context_ratio)
        tensors = {
            "reference_features": self.reference_features.contiguous(),
            "reference_labels": torch.tensor(
                [self._classes.index(r.class_name) for r in self._records], dtype=torch.int64
            ),
        }
        return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MemoryBank:
        """Read a bank written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"Memory file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises its own SafetensorError (not exported everywhere)
            raise InvalidInputError(f"{path} is not a refseg memory file (safetensors): {error}") from error
        if metadata.get("format") != FORMAT_NAME:
            raise InvalidInputError(f"{path} is a safetensors file but not a refseg memory bank.")
        if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
            raise InvalidInputError(f"{path} was written by a newer refseg; upgrade refseg to read it.")
        try:
            encoder = EncoderIdentity(**json.loads(metadata["encoder"]))
            classes = json.loads(metadata["classes"])
            references = json.loads(metadata["references"])
            features = tensors["reference_features"]
            recorded = metadata.get("context_ratio")
            context_ratio = ASSUMED_CONTEXT_RATIO if recorded is None else float(json.loads(recorded))
        except (KeyError, TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
            raise InvalidInputError(f"{path}: damaged memory metadata ({error}).") from error
        bank = cls(encoder, context_ratio)
        bank.context_ratio_assumed = recorded is None
        bank._classes = [c["name"] for c in classes]
        bank._category_ids = {c["name"]: int(c["category_id"]) for c in classes}
        bank._records = [
            ReferenceRecord(int(r["ref_id"]), r["class"], r.get("source", {})) for r in references
        ]
        bank._features = list(features.float().unbind(0)) if len(references) else []
        bank._next_id = int(metadata.get("next_id", len(references)))
        if len(bank._features) != len(bank._records):
            raise InvalidInputError(
                f"{path}: {len(bank._features)} features for {len(bank._records)} references."
            )
        return bank

    def describe(self) -> str:
        """A short human-readable summary (used by ``refseg memory info``)."""
        lines = [
            f"encoder: {self.encoder.name} (revision {self.encoder.revision}, input {self.encoder.input_size}, "
            f"{self.encoder.feature_dim}-d features)",
            f"context ratio: {self.context_ratio}"
            + (
                " (assumed: the file records none; refseg 0.1.0 used 0.2)"
                if self.context_ratio_assumed
                else ""
            ),
            f"classes: {len(self._classes)}, references: {len(self._records)}",
        ]
        counts = self.counts()
        for name in self._classes:
            lines.append(f"  {name:<24} id {self.category_ids[name]:>5}  {counts[name]:>4} reference(s)")
        return "\n".join(lines)


def read_memory_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The raw metadata of a memory file, without loading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _check_class_name(class_name: str) -> str:
    if not isinstance(class_name, str) or not class_name.strip():
        raise InvalidInputError("A class name must be a non-empty string.")
    return class_name.strip()
