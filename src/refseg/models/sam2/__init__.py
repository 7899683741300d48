"""SAM2 as refseg's proposer (:class:`Sam2Proposer`).

- :mod:`.proposer`: the proposer: ``embed`` once, then ``decode_points`` (the grid),
  ``decode_boxes`` and ``decode_prompts`` (one object) against the embedding;
- :mod:`.embedding`: the image embedding and the stock decoders (``Sam2Model.forward``);
- :mod:`.fast_decoder` with :mod:`.image_context`, :mod:`.two_way` and
  :mod:`.low_rank_tokens`: the faster point-grid decoder, same outputs;
- :mod:`.lean_hiera`: the leaner image-encoder forward, same outputs;
- :mod:`.options`: how the last two split their work (:class:`Sam2Options`).
"""

from __future__ import annotations

from ..inputs import IMAGENET_MEAN, IMAGENET_STD
from .embedding import Sam2ImageEmbedding, decode_boxes_stock, decode_points_stock, decode_prompts_stock
from .options import Sam2Options
from .proposer import DecoderName, EncoderName, Sam2Proposer

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DecoderName",
    "EncoderName",
    "Sam2ImageEmbedding",
    "Sam2Options",
    "Sam2Proposer",
    "decode_boxes_stock",
    "decode_points_stock",
    "decode_prompts_stock",
]
