"""The two model seams of refseg: a proposer (SAM2) and an encoder (DINOv2).

The segmenter and the memory bank take any object meeting these Protocols, so tests can
swap in synthetic models whose answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class Proposals:
    """Mask proposals on one target, in the proposer's square input space.

    Attributes:
        low_res_logits: (N, 256, 256) float32 mask logits; the binary mask is ``logits > 0``.
        predicted_iou: (N,) float32 SAM2 predicted IoU of each proposal.
        points: (N, 2) float32 prompt point (x, y) that produced each proposal, in input pixels.
    """

    low_res_logits: torch.Tensor
    predicted_iou: torch.Tensor
    points: torch.Tensor

    def __len__(self) -> int:
        return int(self.predicted_iou.shape[0])

    def select(self, index: torch.Tensor) -> Proposals:
        return Proposals(self.low_res_logits[index], self.predicted_iou[index], self.points[index])


#: The kind of :attr:`EncoderIdentity.fingerprint`: sha256 of the first and last weight tensors,
#: 16 hex digits (what refseg 0.1.0 computed and wrote; kept so that files stay comparable).
LEGACY_FINGERPRINT_KIND = "first-last-sha256-16"


@dataclass(frozen=True)
class EncoderIdentity:
    """What a memory bank must agree on with the encoder that uses it.

    Attributes:
        name, revision: where the weights came from (messages; compared only when no
            fingerprint is shared).
        input_size: side of the square encoder input.
        feature_dim: feature size C.
        fingerprint: a hash of the weights of kind :data:`LEGACY_FINGERPRINT_KIND` (two tensors
            only), the one refseg 0.1.0 wrote and compares; "" if unknown.
        fingerprints: further ``(kind, hex digest)`` pairs, e.g. ``("all-weights-sha256-v1",
            ...)`` (:func:`refseg.models.dinov2.weights_fingerprints`). Kinds are compared like
            with like (:meth:`mismatch`).
    """

    name: str
    revision: str
    input_size: int
    feature_dim: int
    fingerprint: str = ""  # LEGACY_FINGERPRINT_KIND: same model from hub id or local dir agrees
    fingerprints: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, object]:
        """The fields refseg 0.1.0 reads (its file's ``encoder`` entry); see :attr:`fingerprints`
        for the rest."""
        return {
            "name": self.name,
            "revision": self.revision,
            "input_size": self.input_size,
            "feature_dim": self.feature_dim,
            "fingerprint": self.fingerprint,
        }

    def fingerprints_by_kind(self) -> dict[str, str]:
        """Every known fingerprint, kind -> hex digest (the legacy one included)."""
        found = {kind: digest for kind, digest in self.fingerprints if digest}
        if self.fingerprint:
            found.setdefault(LEGACY_FINGERPRINT_KIND, self.fingerprint)
        return found

    def mismatch(self, other: EncoderIdentity) -> str | None:
        """Why features of ``self`` and ``other`` cannot be compared, or None if they can.

        Fingerprints are compared kind by kind, for the kinds both sides know: one differing
        kind is a mismatch. A file of refseg 0.1.0 knows only the legacy kind (two tensors), so
        against it only those two tensors are compared; a file written since also records
        the hash of all weights, and an encoder with any weight changed is refused.
        """
        if self.feature_dim != other.feature_dim:
            return f"feature size {self.feature_dim} vs {other.feature_dim}"
        if self.input_size != other.input_size:
            return f"input size {self.input_size} vs {other.input_size}"
        mine, theirs = self.fingerprints_by_kind(), other.fingerprints_by_kind()
        shared = sorted(mine.keys() & theirs.keys())
        if shared:
            differing = [kind for kind in shared if mine[kind] != theirs[kind]]
            if differing:
                return f"different weights ({self.name} vs {other.name}; {', '.join(differing)} differ)"
            return None
        if self.name != other.name:
            return f"encoder {self.name} vs {other.name}"
        return None


@runtime_checkable
class Proposer(Protocol):
    """Makes mask proposals (SAM2), predictor-style: :meth:`embed` a picture once, then decode
    any number of prompts against the embedding it returned (as segment-anything's
    ``SamPredictor``: ``set_image``, then ``predict``).

    The embedding is whatever :meth:`embed` returns; callers keep it and hand it back,
    never look inside. Every coordinate is in the proposer's S x S input space, as handed to
    the prompt encoder (which adds its own half-pixel shift).
    """

    image_size: int  # side S of the square input, 1024 for SAM2

    def embed(self, image: torch.Tensor, *, no_memory_embedding: bool = True) -> Any:
        """Run the image encoder once.

        Args:
            image: (3, S, S) float32 in [0, 1], S = ``image_size`` (not normalised).
            no_memory_embedding: SAM2's: add its no-memory embedding to the image embedding, as
                its image predictor does (False: the backbone features as they are, as the
                research code decodes its grid; :attr:`refseg.presets.Preset.no_memory_embedding`).
                The segmenter passes it only when False; a proposer without such an
                embedding may ignore it.

        Returns:
            The picture's embedding, for any number of decode calls.
        """
        ...

    def decode_points(
        self,
        embedding: Any,
        points: torch.Tensor,
        *,
        batch_size: int,
        iou_threshold: float,
    ) -> Proposals:
        """Decode one single-point positive prompt per point (the proposal grid).

        Args:
            embedding: from :meth:`embed`.
            points: (P, 2) float32 (x, y) prompt coordinates in S-space.
            batch_size: prompts per decoder call (compute only).
            iou_threshold: keep proposals whose best predicted IoU is > this.

        Returns:
            Proposals of the surviving prompts, in prompt order; per prompt the best of the
            three multimask outputs by predicted IoU.
        """
        ...

    def decode_boxes(self, embedding: Any, boxes: torch.Tensor) -> torch.Tensor:
        """One object per box prompt.

        Args:
            embedding: from :meth:`embed`.
            boxes: (K, 4) float32 xyxy in S-space.

        Returns:
            (K, 256, 256) float32 low-resolution mask logits (single-mask output).
        """
        ...

    def decode_prompts(
        self,
        embedding: Any,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        box: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float]:
        """One object from positive/negative points and/or one box, as SAM2's own predictor
        answers it: a single point without a box gives the best of the three multimask outputs
        by predicted IoU, any other prompt the single-mask output.

        Args:
            embedding: from :meth:`embed`.
            points: (P, 2) float32 (x, y) in S-space, or None.
            labels: (P,) 1 (object) or 0 (not the object); None means all 1.
            box: (4,) float32 xyxy in S-space, or None. Points or a box (or both) are needed.

        Returns:
            (256, 256) float32 low-resolution logits and their predicted IoU.
        """
        ...


@runtime_checkable
class Encoder(Protocol):
    """Dense patch features (DINOv2)."""

    identity: EncoderIdentity  # name, revision, input_size (S), feature_dim (C)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features.

        Args:
            images: (B, 3, S, S) float32 in [0, 1], S = ``identity.input_size`` (not normalised).

        Returns:
            (B, C, S // patch, S // patch) float32 patch tokens after the final LayerNorm;
            CLS and register tokens dropped.
        """
        ...
