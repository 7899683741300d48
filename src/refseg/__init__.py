"""refseg: training-free reference-based instance segmentation.

Show a few annotated examples of each class; refseg finds, segments and labels every
instance of those classes in new images (SAM2 proposals + DINOv2 semantic matching, the
method of "No time to train!", Espinosa et al. 2025).

Importing refseg changes nothing in the process and imports neither torch nor transformers:
the names below that need them (:class:`Segmenter`, :class:`MemoryBank`, :class:`Instances`)
are imported on first use. So a program can choose its process settings first, before torch
is imported (:mod:`refseg.runtime`, as the ``refseg`` command does).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import EncoderMismatchError, InvalidInputError, RefsegError, WeightsUnavailableError
from .presets import FAST, PAPER, PAPER_NEG, PRESETS, Preset, get_preset

if TYPE_CHECKING:
    from .instances import Instances
    from .memory import MemoryBank
    from .segmenter import Segmenter

__version__ = "0.2.0"

_LAZY = {"Instances": ".instances", "MemoryBank": ".memory", "Segmenter": ".segmenter"}

__all__ = [
    "FAST",
    "PAPER",
    "PAPER_NEG",
    "PRESETS",
    "EncoderMismatchError",
    "Instances",
    "InvalidInputError",
    "MemoryBank",
    "Preset",
    "RefsegError",
    "Segmenter",
    "WeightsUnavailableError",
    "__version__",
    "get_preset",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
