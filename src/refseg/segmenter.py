"""The segmenter: models + memory bank + matching, one image in, Instances out."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import matching
from .data.images import ImageLike, load_image
from .errors import InvalidInputError
from .instances import Instances
from .masks import MaskLike, box_numbers, decode_mask
from .memory import MemoryBank, reference_feature
from .models.base import Encoder, Proposals, Proposer
from .preprocess import encoder_input, proposer_input
from .presets import Preset, get_preset

logger = logging.getLogger(__name__)


class Segmenter:
    """Training-free reference-based instance segmentation (METHOD.md).

    Example:
        >>> seg = Segmenter.from_pretrained("fast")
        >>> seg.add_reference("cat.jpg", "cat", mask=cat_mask)
        >>> instances = seg.predict("living_room.jpg")

    Args:
        proposer: any :class:`~refseg.models.base.Proposer` (SAM2).
        encoder: any :class:`~refseg.models.base.Encoder` (DINOv2).
        memory: a memory bank built with the same encoder, or None for an empty one.
        preset: a preset name or :class:`Preset`; ``overrides`` change single settings.
        between_stages: called with no arguments after SAM2's image encoder, after its
            decoder and after matching, once each stage's temporaries are freed (default:
            nothing). The ``refseg`` command passes :func:`refseg.runtime.release_freed_memory`,
            so that resident memory follows the stage in progress; the segmenter itself sets
            no process-wide policy.

    The SAM2 embedding of the last reference picture is kept (one picture, keyed by its
    pixels), so that several boxes or prompts on the same picture, and previews of them, run
    SAM2's image encoder once.
    """

    def __init__(
        self,
        proposer: Proposer,
        encoder: Encoder,
        memory: MemoryBank | None = None,
        preset: str | Preset = "paper",
        *,
        between_stages: Callable[[], object] | None = None,
        **overrides: object,
    ) -> None:
        self.proposer = proposer
        self.encoder = encoder
        self.settings = get_preset(preset).replace(**overrides)
        self.between_stages = between_stages
        self._memory = MemoryBank(encoder.identity)
        self._embedded: tuple[tuple, object] | None = None  # (picture key, SAM2 embedding)
        if memory is not None:
            self.memory = memory

    @classmethod
    def from_pretrained(
        cls,
        preset: str | Preset = "paper",
        *,
        sam2: str | os.PathLike | None = None,
        encoder: str | os.PathLike | None = None,
        device: str | None = None,
        dtype: str | None = None,
        memory: MemoryBank | str | os.PathLike | None = None,
        between_stages: Callable[[], object] | None = None,
        **overrides: object,
    ) -> Segmenter:
        """Load SAM2 and DINOv2 (hub ids or local directories) as a preset says.

        SAM2's checkpoint is checked at once and its weights are loaded on first use
        (:class:`~refseg.models.lazy.LazyProposer`): a memory built from masks alone never
        loads SAM2.

        Args:
            preset: "paper", "fast" or a :class:`Preset`.
            sam2: hub id or local directory overriding the preset's SAM2.
            encoder: hub id or local directory overriding the preset's DINOv2.
            device: "cuda", "cpu", "cuda:1"...; default CUDA when available.
            dtype: "float32" (default) or "bfloat16".
            memory: a MemoryBank or the path of a memory file.
            between_stages: called between the stages of :meth:`predict` (see the class).

        Raises:
            WeightsUnavailableError: a model cannot be loaded (its message says how to use a local
                copy); for SAM2's weights, at their first use.
        """
        from .models.loading import load_encoder, load_proposer

        settings = get_preset(preset).replace(
            sam2_id=None if sam2 is None else str(sam2),
            encoder_id=None if encoder is None else str(encoder),
            dtype=dtype,
            **overrides,
        )
        proposer = load_proposer(settings.sam2_id, device=device, dtype=settings.dtype, lazy=True)
        dino = load_encoder(
            settings.encoder_id, input_size=settings.encoder_input_size, device=device, dtype=settings.dtype
        )
        if memory is not None and not isinstance(memory, MemoryBank):
            memory = MemoryBank.load(memory)
        return cls(proposer, dino, memory=memory, preset=settings, between_stages=between_stages)

    # ------------------------------------------------------------------ memory

    @property
    def memory(self) -> MemoryBank:
        return self._memory

    @memory.setter
    def memory(self, bank: MemoryBank) -> None:
        bank.check_encoder(self.encoder.identity)
        self._memory = bank

    def load_memory(self, path: str | os.PathLike) -> MemoryBank:
        """Replace the memory bank by the one saved at ``path``."""
        self.memory = MemoryBank.load(path)
        return self._memory

    def reference_mask(
        self,
        image: ImageLike,
        *,
        mask: MaskLike | None = None,
        box: Sequence[float] | None = None,
    ) -> np.ndarray:
        """The (H, W) bool instance mask of a reference given as a mask or as a box.

        A box (x1, y1, x2, y2 in pixels) is turned into a mask by SAM2 (single-mask output),
        against the picture's kept embedding when it is the last one SAM2 saw.
        """
        pixels = load_image(image)
        return self._reference_mask(pixels, mask, box)

    def _reference_mask(
        self, pixels: np.ndarray, mask: MaskLike | None, box: Sequence[float] | None
    ) -> np.ndarray:
        height, width = pixels.shape[:2]
        if mask is not None:
            return decode_mask(mask, (height, width))
        if box is None:
            raise InvalidInputError("A reference needs a mask or a box.")
        x1, y1, x2, y2 = _check_box(box, height, width)
        size = self.proposer.image_size
        scale = torch.tensor([size / width, size / height, size / width, size / height])
        boxes = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32) * scale
        with torch.inference_mode():
            logits = self.proposer.decode_boxes(self._embedding(pixels), boxes)
        upsampled = matching.upsample_masks(logits.float().cpu(), (height, width))[0].numpy()
        if not upsampled.any():
            raise InvalidInputError(f"SAM2 found no object inside the box {list(box)}; draw a mask instead.")
        return upsampled

    def add_reference(
        self,
        image: ImageLike,
        class_name: str,
        *,
        mask: MaskLike | None = None,
        box: Sequence[float] | None = None,
        source: dict | None = None,
    ) -> int:
        """Encode one annotated object and add it to the memory bank.

        Args:
            image: path, PIL image or (H, W, 3) uint8 array.
            class_name: the object's class.
            mask: (H, W) bool array, COCO polygon list or RLE dict.
            box: (x1, y1, x2, y2) in pixels, used when no mask is given (SAM2 makes the mask).
            source: free-form provenance stored in the memory file (file name, annotation id...).

        Returns:
            The reference id (for :meth:`MemoryBank.remove_reference`).
        """
        pixels = load_image(image)
        instance_mask = self._reference_mask(pixels, mask, box)
        feature = reference_feature(self.encoder, pixels, instance_mask, self.settings.context_ratio)
        provenance = dict(source or {})
        if isinstance(image, str | os.PathLike) and "file" not in provenance:
            provenance["file"] = os.fspath(image)
        provenance.setdefault("prompt", "mask" if mask is not None else "box")
        return self._memory.add(feature, class_name, provenance, context_ratio=self.settings.context_ratio)

    def _embedding(self, pixels: np.ndarray) -> object:
        """SAM2's embedding of a reference picture: the kept one when ``pixels`` are those of
        the last picture embedded here, else a new one (which is then kept instead)."""
        key = (self.proposer, self.proposer.image_size, *picture_key(pixels))
        kept = self._embedded
        if kept is not None and kept[0] == key:
            return kept[1]
        with torch.inference_mode():
            embedding = self.proposer.embed(self._proposer_input(pixels)[0])
        self._embedded = (key, embedding)
        return embedding

    # ------------------------------------------------------------------ prediction

    def _proposer_input(self, pixels: np.ndarray) -> torch.Tensor:
        return proposer_input(pixels, self.proposer.image_size)

    def _stage_done(self) -> None:
        if self.between_stages is not None:
            self.between_stages()

    def _encoder_input(self, proposer_image: torch.Tensor) -> torch.Tensor:
        return encoder_input(proposer_image, self.encoder.identity.input_size)

    def propose(self, image: ImageLike) -> Proposals:
        """SAM2 proposals on an image (METHOD.md section 2), in the proposer's input space."""
        pixels = load_image(image)
        return self._propose(self._proposer_input(pixels))

    def _propose(self, square: torch.Tensor) -> Proposals:
        points = matching.point_grid(self.settings.points_per_side, self.proposer.image_size)
        embedding = self.proposer.embed(square[0])
        self._stage_done()  # the image encoder's temporaries are freed
        proposals = self.proposer.decode_points(
            embedding,
            points,
            batch_size=self.settings.points_batch_size,
            iou_threshold=self.settings.iou_threshold,
        )
        del embedding  # the target's embedding is not kept: it is not asked for again
        return proposals

    def predict(self, image: ImageLike) -> Instances:
        """Find, segment and label every instance of the memory's classes.

        Args:
            image: path, PIL image or (H, W, 3) uint8 array (grayscale, RGBA, 16-bit and
                EXIF-rotated images are handled).

        Returns:
            Instances at the original image size, best score first (at most ``max_instances``).
        """
        pixels = load_image(image)
        prototypes = self._memory.prototypes()
        class_names = self._memory.class_names
        height, width = pixels.shape[:2]
        settings = self.settings
        with torch.inference_mode():
            square = self._proposer_input(pixels)
            proposals = self._propose(square)
            self._stage_done()  # SAM2's temporaries and embedding are freed
            if len(proposals) == 0:
                return Instances.empty(height, width, class_names)
            features = self.encoder.encode(self._encoder_input(square))[0].float().cpu()
            result = matching.postprocess(
                proposals.low_res_logits.float().cpu(),
                proposals.predicted_iou.float().cpu(),
                features,
                prototypes,
                (height, width),
                nms_threshold=settings.nms_threshold,
                max_candidates=settings.max_candidates,
                merge_exponent=settings.merge_exponent,
                max_instances=settings.max_instances,
            )
            del proposals, features
            self._stage_done()
        return Instances(
            masks=_numpy(result.masks).astype(bool),
            boxes=_numpy(result.boxes).astype(np.float32),
            scores=_numpy(result.scores).astype(np.float32),
            labels=_numpy(result.labels).astype(np.int64),
            class_names=class_names,
        )


def picture_key(pixels: np.ndarray) -> tuple:
    """What identifies a picture's pixels: shape, dtype and a hash of every byte (cheap next
    to SAM2's image encoder, and no edit of the picture goes unnoticed)."""
    contiguous = np.ascontiguousarray(pixels)
    digest = hashlib.blake2b(contiguous, digest_size=16).hexdigest()
    return (contiguous.shape, str(contiguous.dtype), digest)


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _check_box(box: Sequence[float], height: int, width: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box_numbers(box, what="A box (x1, y1, x2, y2)")
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 <= x1 or y2 <= y1:
        raise InvalidInputError(f"The box {list(box)} is empty or outside the {width}x{height} image.")
    return x1, y1, x2, y2
