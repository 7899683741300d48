"""The memory bank: one feature per reference, class prototypes, one safetensors file.

docs/method.md section 2. Per reference: a square context crop around the instance box, resized
to the encoder input, encoded, and the patch features averaged with the (soft) mask as
weights (:mod:`refseg.reference_features`). A class prototype is the L2-normalised mean of its
positive references' features, each reference counting the same whatever its size.

Besides the positives (examples of a class), the bank keeps negative references: examples of
what is NOT a class, or of no class at all ("background" negatives, class None). They never
change a prototype; a preset with ``negatives`` on uses them when scoring
(:func:`refseg.matching.nearest_example_vetoes`). The file format and its validation are in
:mod:`refseg.memory_file`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import EncoderMismatchError, InvalidInputError
from .matching import ReferenceExamples
from .memory_file import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MemoryContents,
    ReferenceRecord,
    check_class_name,
    read_memory_file,
    read_memory_metadata,
    write_memory_file,
)
from .models.base import EncoderIdentity
from .presets import SETTING_CHOICES

# The reference feature's steps lived here before reference_features.py; still importable from here.
from .reference_features import context_crop_box, pool_reference, reference_feature, reference_inputs

logger = logging.getLogger(__name__)

__all__ = [
    "ASSUMED_CONTEXT_RATIO",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MemoryBank",
    "ReferenceRecord",
    "context_crop_box",
    "pool_reference",
    "read_memory_metadata",
    "reference_feature",
    "reference_inputs",
]

#: The context ratio of a file that records none: refseg 0.1.0 wrote none, and 0.2 was its default.
ASSUMED_CONTEXT_RATIO = 0.2
#: The crop convention of a file that records none: every refseg before the research
#: conventions of ``paper`` cropped this way (:attr:`refseg.presets.Preset.reference_crop`).
ASSUMED_REFERENCE_CROP = "refseg"


# --------------------------------------------------------------------------- the bank


class MemoryBank:
    """Per-reference features and class prototypes, positive and negative references.

    Classes are defined by their positive references and keep the order in which they were
    first added; a label ``k`` in results is the index into :attr:`class_names`. A negative
    reference is an example of what is not its class (``negative=True``), or, with class None,
    of no class at all (a background negative). A negative of a class needs a positive of that
    class first; removing a class's last positive removes the class and its negatives
    (:meth:`remove_reference`); background negatives stay until removed.

    The bank records the settings that shaped its features: the encoder (:attr:`encoder`, with
    its input size), the reference crop's :attr:`context_ratio` and its :attr:`reference_crop`
    convention. All references of a bank share one context ratio and one crop convention: an
    empty bank takes those of its first reference, and adding one made otherwise raises
    :class:`InvalidInputError` (its feature would not be comparable). Readers (``memory
    show``, the app's memory picture) crop with the bank's ratio and convention.

    Attributes:
        encoder: identity of the encoder that made the features.
        context_ratio: the references' crop margin (side = (1 + ratio) x the box's longer side).
        context_ratio_assumed: True for a file that records no ratio (refseg 0.1.0): the ratio
            is then :data:`ASSUMED_CONTEXT_RATIO`, 0.1.0's default.
        reference_crop: the references' crop convention, ``"research"`` or ``"refseg"``.
        reference_crop_assumed: True for a file that records none (written before the
            conventions existed): the convention is then :data:`ASSUMED_REFERENCE_CROP`.
    """

    def __init__(self, encoder: EncoderIdentity, context_ratio: float = ASSUMED_CONTEXT_RATIO) -> None:
        self.encoder = encoder
        self.context_ratio = float(context_ratio)
        self.context_ratio_assumed = False
        self.reference_crop = ASSUMED_REFERENCE_CROP
        self.reference_crop_assumed = False
        self._features: list[torch.Tensor] = []
        self._records: list[ReferenceRecord] = []
        self._classes: dict[str, None] = {}  # insertion-ordered: class order, O(1) membership
        self._category_ids: dict[str, int] = {}
        self._next_id = 0

    # ---- contents

    @property
    def class_names(self) -> list[str]:
        return list(self._classes)

    @property
    def references(self) -> list[ReferenceRecord]:
        """Every reference, positive and negative, in the order they were added."""
        return list(self._records)

    @property
    def reference_features(self) -> torch.Tensor:
        """(R, C) float32 features of every reference (positive and negative), in reference order."""
        if not self._features:
            return torch.zeros((0, self.encoder.feature_dim))
        return torch.stack(self._features)

    @property
    def category_ids(self) -> dict[str, int]:
        """Class name -> category id (the data set's, or 1-based class order by default)."""
        return {name: self._category_ids.get(name, index + 1) for index, name in enumerate(self._classes)}

    @property
    def has_negatives(self) -> bool:
        """True when the bank holds a negative reference (of a class, or of the background)."""
        return any(record.negative for record in self._records)

    def __len__(self) -> int:
        """The number of references, positive and negative."""
        return len(self._records)

    def counts(self) -> dict[str, int]:
        """Positive references per class, in class order."""
        counts = dict.fromkeys(self._classes, 0)
        for record in self._records:
            if not record.negative:
                counts[record.class_name] += 1
        return counts

    def negative_counts(self) -> dict[str | None, int]:
        """Negative references per class, in class order, then ``None``: the background negatives."""
        counts: dict[str | None, int] = dict.fromkeys(self._classes, 0)
        counts[None] = 0
        for record in self._records:
            if record.negative:
                counts[record.class_name] += 1
        return counts

    def _class_labels(self, records: Sequence[ReferenceRecord]) -> torch.Tensor:
        """(len(records),) int64 class index of each record; -1 for a background negative."""
        index = {name: i for i, name in enumerate(self._classes)}
        return torch.tensor(
            [-1 if r.class_name is None else index[r.class_name] for r in records], dtype=torch.int64
        )

    def _select(self, negative: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (n, C), class labels (n,)) of the positive or the negative references."""
        chosen = [i for i, record in enumerate(self._records) if record.negative == negative]
        if not chosen:
            return torch.zeros((0, self.encoder.feature_dim)), torch.zeros(0, dtype=torch.int64)
        features = torch.stack([self._features[i] for i in chosen])
        return features, self._class_labels([self._records[i] for i in chosen])

    def prototypes(self) -> torch.Tensor:
        """(K, C) L2-normalised class prototypes in :attr:`class_names` order (docs/method.md 2.7):
        the mean of each class's positive references; negatives play no part."""
        if not self._classes:
            raise InvalidInputError(
                "The memory bank has no class: add at least one (positive) reference first."
            )
        features, labels = self._select(negative=False)
        sums = torch.zeros((len(self._classes), features.shape[1]), dtype=features.dtype)
        sums.index_add_(0, labels, features)
        means = sums / torch.bincount(labels, minlength=len(self._classes)).unsqueeze(1).to(features.dtype)
        return F.normalize(means, dim=1)

    def reference_examples(self) -> ReferenceExamples:
        """The positive and negative reference features with their class indices, for
        :func:`refseg.matching.nearest_example_vetoes` (background negatives have class -1)."""
        positive_features, positive_labels = self._select(negative=False)
        negative_features, negative_labels = self._select(negative=True)
        return ReferenceExamples(positive_features, positive_labels, negative_features, negative_labels)

    def fingerprint(self) -> str:
        """sha256 of what predictions depend on: features, their classes and kinds (positive or
        negative), class order, category ids.

        Equal for the same bank in any file (or none); a resume compares it
        (:func:`refseg.partials.run_key`). A bank without negatives has the fingerprint it had
        before negatives existed.
        """
        digest = hashlib.sha256()
        digest.update(self.reference_features.contiguous().numpy().astype("<f4").tobytes())
        described: dict[str, object] = {
            "classes": list(self._classes),
            "reference_classes": [r.class_name for r in self._records],
            "category_ids": self.category_ids,
        }
        if self.has_negatives:
            described["negative"] = [r.negative for r in self._records]
        digest.update(json.dumps(described, sort_keys=True).encode("utf-8"))
        return digest.hexdigest()

    # ---- editing

    def add(
        self,
        feature: torch.Tensor,
        class_name: str | None,
        source: dict | None = None,
        *,
        context_ratio: float | None = None,
        reference_crop: str | None = None,
        negative: bool = False,
    ) -> int:
        """Add one reference feature (C,). Returns its reference id.

        Args:
            class_name: the class; None only for a background negative (``negative=True``).
            context_ratio: the crop margin the feature was made with. An empty bank takes it;
                a non-empty bank refuses another one. None: the bank's (not checked).
            reference_crop: the crop convention the feature was made with, checked the same way.
            negative: an example of what is NOT ``class_name`` (of no class when it is None).

        Raises:
            InvalidInputError: a bad class name, a negative of a class with no positive yet, a
                wrong feature size, a non-finite or all-zero feature, or a context ratio other
                than the bank's.
        """
        class_name = self.check_new_reference(class_name, negative)
        feature = feature.detach().float().cpu().reshape(-1)
        if feature.shape[0] != self.encoder.feature_dim:
            raise InvalidInputError(
                f"Feature size {feature.shape[0]} does not match the bank's encoder ({self.encoder.feature_dim})."
            )
        if not torch.isfinite(feature).all():
            raise InvalidInputError(f"The reference feature for {class_name!r} is not finite.")
        if not feature.any():
            raise InvalidInputError(
                f"The reference feature for {class_name!r} is all zeros: it matches nothing."
            )
        if context_ratio is not None:
            self._check_context_ratio(float(context_ratio))
        if reference_crop is not None:
            self._check_reference_crop(reference_crop)
        if not self._records:  # an empty bank takes the settings of its first reference
            if context_ratio is not None:
                self.context_ratio, self.context_ratio_assumed = float(context_ratio), False
            if reference_crop is not None:
                self.reference_crop, self.reference_crop_assumed = reference_crop, False
        if class_name is not None and not negative:
            self._classes.setdefault(class_name, None)
        ref_id = self._next_id
        self._next_id += 1
        self._features.append(feature)
        self._records.append(ReferenceRecord(ref_id, class_name, dict(source or {}), bool(negative)))
        return ref_id

    def check_new_reference(self, class_name: str | None, negative: bool = False) -> str | None:
        """The class name a new reference would get (stripped), or an error now: before its
        feature is made.

        Raises:
            InvalidInputError: a bad class name (:func:`refseg.memory_file.check_class_name`),
                no class for a positive reference, or a negative of a class with no positive yet.
        """
        if class_name is None:
            if not negative:
                raise InvalidInputError(
                    "A positive reference needs a class name; only a negative one (negative=True) may have "
                    "none (a background example: something that is none of the classes)."
                )
            return None
        class_name = check_class_name(class_name)
        if negative and class_name not in self._classes:
            raise InvalidInputError(
                f"The memory has no positive reference of {class_name!r} yet: a negative example says "
                f"what is not {class_name!r}, so add a positive one first (or add this one as a "
                "background negative, class None)."
            )
        return class_name

    def _check_context_ratio(self, ratio: float) -> None:
        if self._records and not math.isclose(ratio, self.context_ratio, rel_tol=0.0, abs_tol=1e-9):
            assumed = " (assumed: the file does not record it)" if self.context_ratio_assumed else ""
            raise InvalidInputError(
                f"This memory bank's references were cropped with context ratio {self.context_ratio}"
                f"{assumed}, this reference with {ratio}: one bank holds one ratio. Add it with "
                f"context_ratio={self.context_ratio} (--context-ratio {self.context_ratio}), or build a new memory."
            )

    def _check_reference_crop(self, convention: str) -> None:
        choices = SETTING_CHOICES["reference_crop"]
        if convention not in choices:
            raise InvalidInputError(f"reference_crop must be one of {list(choices)}, not {convention!r}.")
        if self._records and convention != self.reference_crop:
            assumed = " (assumed: the file predates the setting)" if self.reference_crop_assumed else ""
            raise InvalidInputError(
                f"This memory bank's references were cropped with the {self.reference_crop!r} convention"
                f"{assumed}, this reference with {convention!r}: one bank holds one convention, so that "
                f"features made differently are never mixed. Add it with reference_crop={self.reference_crop!r} "
                f"(--reference-crop {self.reference_crop}), or build a new memory."
            )

    def set_category_id(self, class_name: str, category_id: int) -> None:
        if class_name not in self._classes:
            raise InvalidInputError(f"Unknown class {class_name!r}; the bank holds: {list(self._classes)}.")
        self._category_ids[class_name] = int(category_id)

    def remove_reference(self, ref_id: int) -> list[int]:
        """Remove one reference, positive or negative. Returns the ids removed.

        When it was its class's last positive reference, the class goes too, and with it the
        class's negative references (they say what is not that class, which no longer exists):
        their ids are returned after ``ref_id``. Background negatives are never removed with a class.
        """
        index = next((i for i, r in enumerate(self._records) if r.ref_id == ref_id), None)
        if index is None:
            raise InvalidInputError(f"No reference with id {ref_id} in the memory bank.")
        record = self._records[index]
        del self._records[index]
        del self._features[index]
        removed = [ref_id]
        name = record.class_name
        if not record.negative and not any(r.class_name == name and not r.negative for r in self._records):
            removed += self._drop_class(name)
            if len(removed) > 1:
                logger.info(
                    "class %r had no positive reference left: its negatives %s went too", name, removed[1:]
                )
        return removed

    def remove_class(self, class_name: str) -> list[int]:
        """Remove a class and all its references, positive and negative. Returns the ids removed."""
        if class_name not in self._classes:
            raise InvalidInputError(f"Unknown class {class_name!r}; the bank holds: {list(self._classes)}.")
        return self._drop_class(class_name)

    def _drop_class(self, class_name: str | None) -> list[int]:
        keep = [i for i, r in enumerate(self._records) if r.class_name != class_name]
        removed = [r.ref_id for r in self._records if r.class_name == class_name]
        self._records = [self._records[i] for i in keep]
        self._features = [self._features[i] for i in keep]
        self._classes.pop(class_name, None)
        self._category_ids.pop(class_name, None)
        return removed

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
        """Write the bank to ONE safetensors file (features + json metadata). Returns the path.

        Format version 1 (readable by refseg 0.1.0) without negative references, 2 with them
        (:mod:`refseg.memory_file`).
        """
        from . import __version__

        contents = MemoryContents(
            encoder=self.encoder,
            classes=list(self._classes),
            category_ids=self.category_ids,
            records=self._records,
            features=self.reference_features,
            next_id=self._next_id,
            # an assumed ratio stays unrecorded: it was never known
            context_ratio=None if self.context_ratio_assumed else self.context_ratio,
            reference_crop=None if self.reference_crop_assumed else self.reference_crop,
        )
        return write_memory_file(path, contents, __version__)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MemoryBank:
        """Read a bank written by :meth:`save` (any refseg version), checked
        (:func:`refseg.memory_file.read_memory_file`)."""
        contents = read_memory_file(path)
        recorded = contents.context_ratio
        bank = cls(contents.encoder, ASSUMED_CONTEXT_RATIO if recorded is None else recorded)
        bank.context_ratio_assumed = recorded is None
        bank.reference_crop = contents.reference_crop or ASSUMED_REFERENCE_CROP
        bank.reference_crop_assumed = contents.reference_crop is None
        bank._classes = dict.fromkeys(contents.classes)
        bank._category_ids = dict(contents.category_ids)
        bank._records = list(contents.records)
        bank._features = list(contents.features.unbind(0))
        bank._next_id = contents.next_id
        return bank

    def describe(self) -> str:
        """A short human-readable summary (used by ``refseg memory info``): per class its
        category id, positive and negative references; then the background negatives."""
        negatives = self.negative_counts()
        total_negative = sum(negatives.values())
        lines = [
            f"encoder: {self.encoder.name} (revision {self.encoder.revision}, input {self.encoder.input_size}, "
            f"{self.encoder.feature_dim}-d features)",
            f"context ratio: {self.context_ratio}"
            + (
                " (assumed: the file records none; refseg 0.1.0 used 0.2)"
                if self.context_ratio_assumed
                else ""
            )
            + f"; reference crop: {self.reference_crop}"
            + (" (assumed: the file records none)" if self.reference_crop_assumed else ""),
            f"classes: {len(self._classes)}, references: {len(self._records) - total_negative} positive, "
            f"{total_negative} negative",
        ]
        counts = self.counts()
        category_ids = self.category_ids
        for name in self._classes:
            lines.append(
                f"  {name:<24} id {category_ids[name]:>5}  {counts[name]:>4} positive  {negatives[name]:>4} negative"
            )
        if negatives[None]:
            lines.append(f"  background negatives (no class): {negatives[None]}")
        return "\n".join(lines)
