"""How refseg's own SAM2 forwards split their work: one frozen set of options, passed in.

None of these changes a result (the tests compare every setting with transformers' own
forwards); they trade speed against memory, or switch off one of the fast decoder's
rewrites for comparison (``benchmarks/bench_levers.py``). docs/speed.md has the measurements
behind the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sam2Options:
    """Work-splitting options of the fast decoder and the lean image encoder.

    Attributes:
        prompt_chunk: prompts per pass of the fast decoder's two-way transformer (at most the
            caller's batch size): the per-chunk temporaries stay small. 8 ran as fast as 16
            on the full-size decoder and holds half the per-prompt image tokens.
        upscale_chunk: prompts upscaled together.
        pixel_tile: low-resolution pixels (of 64 x 64) that go through every upscaling step at
            a time, so a tile's intermediates stay in cache.
        conv1_chain: compute the first upscaling convolution through the transformer's
            image-side LayerNorms (float32 only; ``fast_decoder._Conv1ThroughChain``); False
            uses the direct product.
        low_rank_tokens: run the two-way transformer on a low-rank description of each
            prompt's image tokens instead of the tokens (float32 with ``conv1_chain`` only;
            ``low_rank_tokens.py``).
        tokens_per_piece: the lean Hiera encoder's piece of work: a windowed block takes
            bands of whole window rows up to about this many tokens, the MLP this many rows.
    """

    prompt_chunk: int = 8
    upscale_chunk: int = 4
    pixel_tile: int = 1024
    conv1_chain: bool = True
    low_rank_tokens: bool = True
    tokens_per_piece: int = 8192

    def __post_init__(self) -> None:
        for name in ("prompt_chunk", "upscale_chunk", "pixel_tile", "tokens_per_piece"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Sam2Options.{name} must be a positive integer, not {value!r}")


DEFAULT_OPTIONS = Sam2Options()
