"""Which models a run uses, said once: preset, checkpoints, device, dtype and setting overrides.

Every ``refseg`` verb turns its model options into one :class:`ModelSpec` and asks it for what
it needs (a whole :class:`~refseg.Segmenter`, SAM2 alone, DINOv2 alone), so the verbs never
load models by hand and a preset means the same thing everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .presets import Preset, get_preset

if TYPE_CHECKING:  # pragma: no cover
    from .memory import MemoryBank
    from .models.base import Encoder, Proposer
    from .segmenter import Segmenter


@dataclass(frozen=True)
class ModelSpec:
    """A preset with checkpoint, device, dtype and setting overrides.

    Attributes:
        preset: preset name ("paper", "fast").
        sam2: SAM2 hub id or local directory overriding the preset's.
        encoder: DINOv2 hub id or local directory overriding the preset's.
        device: "cpu", "cuda", "cuda:1"...; None: CUDA when available.
        dtype: "float32" or "bfloat16" overriding the preset's.
        overrides: other :class:`~refseg.Preset` fields (``points_per_side=16``...); None
            values are ignored.
        trim_between_stages: give freed memory back to the system between the stages of each
            prediction (:func:`refseg.runtime.release_freed_memory`). A process policy: the
            command line turns it on; a library caller decides for its own process.
    """

    preset: str = "paper"
    sam2: str | None = None
    encoder: str | None = None
    device: str | None = None
    dtype: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    trim_between_stages: bool = False

    def settings(self) -> Preset:
        """The preset with every override applied (what the run will use).

        Raises:
            InvalidInputError: an unknown preset or setting.
        """
        return get_preset(self.preset).replace(
            sam2_id=self.sam2, encoder_id=self.encoder, dtype=self.dtype, **self.overrides
        )

    def load_segmenter(
        self, *, device: str | None = None, memory: MemoryBank | str | os.PathLike | None = None
    ) -> Segmenter:
        """SAM2, DINOv2 and the settings as a :class:`~refseg.Segmenter`.

        Args:
            device: overrides :attr:`device` (e.g. a process's GPU in a multi-process run).
            memory: a memory bank or memory file to start from.

        Raises:
            WeightsUnavailableError: a model cannot be loaded.
        """
        from .runtime import release_freed_memory
        from .segmenter import Segmenter

        return Segmenter.from_pretrained(
            self.preset,
            sam2=self.sam2,
            encoder=self.encoder,
            device=device or self.device,
            dtype=self.dtype,
            memory=memory,
            between_stages=release_freed_memory if self.trim_between_stages else None,
            **{k: v for k, v in self.overrides.items() if v is not None},
        )

    def load_proposer(self) -> Proposer:
        """SAM2 alone (the settings' ``sam2_id`` and ``dtype``), e.g. to make masks from boxes.

        The checkpoint is checked now and its weights loaded on first use
        (:class:`~refseg.models.lazy.LazyProposer`), as in :meth:`load_segmenter`.
        """
        from .models.loading import load_proposer

        settings = self.settings()
        return load_proposer(settings.sam2_id, device=self.device, dtype=settings.dtype, lazy=True)

    def load_encoder(self, *, input_size: int | None = None) -> Encoder:
        """DINOv2 alone (the settings' ``encoder_id`` and ``dtype``).

        Args:
            input_size: the encoder's input side (default: the settings'); a memory bank's
                (``bank.encoder.input_size``) to encode as the bank did.
        """
        from .models.loading import load_encoder

        settings = self.settings()
        return load_encoder(
            settings.encoder_id,
            input_size=input_size or settings.encoder_input_size,
            device=self.device,
            dtype=settings.dtype,
        )
