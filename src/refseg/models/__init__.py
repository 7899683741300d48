"""Model wrappers: SAM2 proposer, DINOv2 encoder, and their loading.

The wrappers and loaders are imported lazily (they import ``transformers``), so code that
only needs the protocols in :mod:`refseg.models.base` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .base import Encoder, EncoderIdentity, Proposals, Proposer

if TYPE_CHECKING:
    from .dinov2 import Dinov2Encoder
    from .loading import load_encoder, load_proposer, resolve_device, resolve_dtype
    from .sam2 import Sam2ImageEmbedding, Sam2Options, Sam2Proposer

_LAZY = {
    "Dinov2Encoder": ".dinov2",
    "Sam2Proposer": ".sam2",
    "Sam2ImageEmbedding": ".sam2",
    "Sam2Options": ".sam2",
    "load_encoder": ".loading",
    "load_proposer": ".loading",
    "resolve_device": ".loading",
    "resolve_dtype": ".loading",
}

__all__ = [
    "Dinov2Encoder",
    "Encoder",
    "EncoderIdentity",
    "Proposals",
    "Proposer",
    "Sam2ImageEmbedding",
    "Sam2Options",
    "Sam2Proposer",
    "load_encoder",
    "load_proposer",
    "resolve_device",
    "resolve_dtype",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
