"""The segmenter: models + memory bank + matching, one image in, Instances out."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import dedup, matching
from .data.images import ImageLike, load_image
from .errors import InvalidInputError
from .instances import Instances
from .masks import MaskLike, box_numbers, decode_mask
from .memory import MemoryBank
from .models.base import Encoder, Proposals, Proposer
from .preprocess import encoder_input, proposer_input
from .presets import Preset, get_preset
from .prompts import check_prompt
from .reference_features import reference_feature

logger = logging.getLogger(__name__)


class Segmenter:
    """Training-free reference-based instance segmentation (docs/method.md).

    Example:
        >>> seg = Segmenter.from_pretrained("fast")
        >>> seg.add_reference("cat.jpg", "cat", mask=cat_mask)
        >>> seg.add_reference("cat2.jpg", "cat", points=[(120, 80), (200, 90)], point_labels=[1, 0])
        >>> seg.add_reference("fox.jpg", "cat", box=(10, 20, 200, 180), negative=True)  # not a cat
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
        crop = self.settings.reference_crop
        if len(bank) > 0 and bank.reference_crop != crop:
            # usable (features of either crop match), but not what this preset computes
            logger.warning(
                "The memory's references were cropped the %r way, preset %s crops the %r way: predictions use "
                "the memory as it is, and adding references to it is refused (rebuild the memory with "
                "--reference-crop %s to compute exactly what the preset does; docs/fidelity.md).",
                bank.reference_crop,
                self.settings.name,
                crop,
                crop,
            )
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
        points: Sequence[Sequence[float]] | None = None,
        point_labels: Sequence[int] | None = None,
    ) -> np.ndarray:
        """The (H, W) bool instance mask of a reference, without adding it (e.g. to preview it).

        Takes what :meth:`add_reference` takes: a mask, or prompts for SAM2 (a box and/or
        points), and answers as SAM2's own predictor: a box alone or any prompt with several
        points or a box gives the single-mask output; a single point without a box the best
        of the three multimask outputs by predicted IoU. The low-resolution logits are
        upsampled to the picture (bilinear) and thresholded at 0.

        The picture's SAM2 embedding is kept: further prompts on the same picture (previews,
        then :meth:`add_reference`) do not run SAM2's image encoder again.

        Raises:
            InvalidInputError: no mask and no prompt, a mask together with prompts, a prompt
                that is not valid (:func:`refseg.prompts.check_prompt`), or SAM2 finding nothing.
        """
        pixels = load_image(image)
        instance_mask, _ = self._reference_mask(pixels, mask, box, points, point_labels)
        return instance_mask

    def _reference_mask(
        self,
        pixels: np.ndarray,
        mask: MaskLike | None,
        box: Sequence[float] | None,
        points: Sequence[Sequence[float]] | None,
        point_labels: Sequence[int] | None,
    ) -> tuple[np.ndarray, dict[str, object]]:
        """The instance mask and how it was marked (provenance: prompt kind, box, points, labels)."""
        height, width = pixels.shape[:2]
        if mask is not None:
            if points is not None or point_labels is not None:
                raise InvalidInputError(
                    "Give a mask, or prompts for SAM2 (a box and/or points), not both: the mask would be used "
                    "and the prompts ignored."
                )
            marked: dict[str, object] = {"prompt": "mask"}
            if box is not None:  # the mask's annotated box (a COCO annotation has both): not a prompt
                marked["annotated_box"] = list(box_numbers(box, what="The reference's box"))
            return decode_mask(mask, (height, width)), marked
        prompt = check_prompt(box, points, point_labels, height, width)
        if prompt is None:
            raise InvalidInputError("A reference needs a mask, a box or points on the object.")
        scaled_points, labels, scaled_box = prompt.scaled(self.proposer.image_size, height, width)
        embedding = self._embedding(pixels)
        with torch.inference_mode():
            if scaled_points is None:  # a box alone: the proposer's box path
                logits = self.proposer.decode_boxes(embedding, scaled_box[None])
            else:
                logits = self.proposer.decode_prompts(embedding, scaled_points, labels, scaled_box)[0][None]
        # as SAM2's own predictor resizes its masks: bilinear without antialiasing
        upsampled = dedup.upsample_masks(logits.float().cpu(), (height, width), antialias=False)[0].numpy()
        if not upsampled.any():
            raise InvalidInputError(
                f"SAM2 found no object for {prompt.describe()}; mark it otherwise, or draw a mask."
            )
        return upsampled, prompt.to_source()

    def add_reference(
        self,
        image: ImageLike,
        class_name: str | None,
        *,
        mask: MaskLike | None = None,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] | None = None,
        point_labels: Sequence[int] | None = None,
        negative: bool = False,
        source: dict | None = None,
    ) -> int:
        """Encode one marked object and add it to the memory bank.

        Args:
            image: path, PIL image or (H, W, 3) uint8 array.
            class_name: the object's class. None only with ``negative=True``: a background
                negative, an example of something that is none of the classes.
            mask: (H, W) bool array, COCO polygon list or RLE dict.
            box: (x1, y1, x2, y2) in pixels; SAM2 makes the mask from it when no mask is given.
                Given together with a mask, it is the object's annotated box (a COCO
                annotation's ``bbox``), not a prompt: the ``"research"`` reference crop
                (``paper``, :attr:`Preset.reference_crop`) is centred on it, as the research
                code centres its crop on the annotation's box; refseg's crop ignores it. It is
                recorded in the source as ``annotated_box``.
            points: (x, y) pixels on the picture; SAM2 makes the mask, with the box if one is
                given too (as SAM2's predictor: see :meth:`reference_mask`).
            point_labels: per point 1 (on the object) or 0 (not on it); default all 1.
            negative: an example of what is NOT ``class_name`` (same features as a positive one).
                The class needs a positive reference first. Used by presets with ``negatives``
                (``paper-neg``, ``fast``); ``paper`` ignores negatives.
            source: free-form provenance stored in the memory file (file name, annotation id...).
                How the object was marked is added to it: ``prompt`` ("mask", "box", "points"
                or "box+points") and the ``box``, ``points`` and ``point_labels`` given, in
                pixels, so ``refseg memory show`` can make the mask again.

        Returns:
            The reference id (for :meth:`MemoryBank.remove_reference`).

        Raises:
            InvalidInputError: as :meth:`reference_mask`, or a class name the bank refuses
                (:meth:`MemoryBank.add`).
        """
        self._memory.check_new_reference(class_name, negative)  # before any model runs
        pixels = load_image(image)
        instance_mask, marked = self._reference_mask(pixels, mask, box, points, point_labels)
        settings = self.settings
        annotated_box = marked.get("annotated_box")
        feature = reference_feature(
            self.encoder,
            pixels,
            instance_mask,
            settings.context_ratio,
            box=annotated_box,
            convention=settings.reference_crop,
        )
        provenance = dict(source or {})
        if isinstance(image, str | os.PathLike) and "file" not in provenance:
            provenance["file"] = os.fspath(image)
        for key, value in marked.items():
            provenance.setdefault(key, value)
        return self._memory.add(
            feature,
            class_name,
            provenance,
            context_ratio=settings.context_ratio,
            reference_crop=settings.reference_crop,
            negative=negative,
        )

    def _embedding(self, pixels: np.ndarray) -> object:
        """SAM2's embedding of a reference picture: the kept one when ``pixels`` are those of
        the last picture embedded here, else a new one (which is then kept instead)."""
        key = (self.proposer, self.proposer.image_size, *picture_key(pixels))
        kept = self._embedded
        if kept is not None and kept[0] == key:
            return kept[1]
        # A prompted reference is SAM2 used as its own image predictor (the research code never
        # prompts one): SAM2's predictor input, whatever the preset's target conventions, so the
        # web app's preview (refseg.app.draft) is the mask added.
        with torch.inference_mode():
            embedding = self.proposer.embed(proposer_input(pixels, self.proposer.image_size, "torch")[0])
        self._embedded = (key, embedding)
        return embedding

    # ------------------------------------------------------------------ prediction

    def _proposer_input(self, pixels: np.ndarray) -> torch.Tensor:
        return proposer_input(pixels, self.proposer.image_size, self.settings.proposer_resize)

    def _stage_done(self) -> None:
        if self.between_stages is not None:
            self.between_stages()

    def _encoder_input(self, proposer_image: torch.Tensor) -> torch.Tensor:
        return encoder_input(
            proposer_image, self.encoder.identity.input_size, antialias=self.settings.encoder_antialias
        )

    def propose(self, image: ImageLike) -> Proposals:
        """SAM2 proposals on an image (docs/method.md section 3), in the proposer's input space."""
        pixels = load_image(image)
        return self._propose(self._proposer_input(pixels))

    def _propose(self, square: torch.Tensor) -> Proposals:
        settings = self.settings
        points = matching.point_grid(settings.points_per_side, self.proposer.image_size, settings.grid_order)
        # the grid's embedding: with SAM2's no-memory embedding or, in paper, without it
        # (Preset.no_memory_embedding); only asked for when it differs from embed's default
        extra = {} if settings.no_memory_embedding else {"no_memory_embedding": False}
        embedding = self.proposer.embed(square[0], **extra)
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
            With the ``negatives`` setting on (``paper-neg``, ``fast``) and negative references
            in the memory, classes are vetoed by them (:func:`refseg.matching.nearest_example_vetoes`).
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
            examples = (
                self._memory.reference_examples()
                if settings.negatives and self._memory.has_negatives
                else None
            )
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
                examples=examples,
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
