"""SAM2 as refseg's proposer: the image embedding, the stock and fast decoders, the lean encoder."""

from __future__ import annotations

from .proposer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecoderName,
    EncoderName,
    Sam2ImageEmbedding,
    Sam2Proposer,
    autocast_context,
    decode_points_stock,
    imagenet_normalize,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DecoderName",
    "EncoderName",
    "Sam2ImageEmbedding",
    "Sam2Proposer",
    "autocast_context",
    "decode_points_stock",
    "imagenet_normalize",
]
