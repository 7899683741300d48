"""The low-rank image tokens (models/sam2/low_rank_tokens.py) against the same quantities computed
on the built tokens, in float64 on random inputs, for blocks 0, 1 and 2."""

from __future__ import annotations

import pytest
import torch

from refseg.models.sam2.low_rank_tokens import ImageSide, LowRankTokens, centring_map

PIXELS, CHANNELS, HEADS, TOKENS, HEAD_DIM, PROMPTS = 40, 12, 2, 3, 4, 2


def _block(generator, image, previous=None, rstd=None, gain=None, bias=None, key="0"):
    """Random attention weights (softmax over each head's tokens) and values of one block."""
    probs = torch.randn((PROMPTS, HEADS, TOKENS, PIXELS), generator=generator, dtype=torch.float64)
    probs = probs.softmax(dim=2).reshape(PROMPTS, HEADS * TOKENS, PIXELS)
    v = torch.randn((PROMPTS, HEADS, TOKENS, HEAD_DIM), generator=generator, dtype=torch.float64)
    o_weight = torch.randn((CHANNELS, HEADS * HEAD_DIM), generator=generator, dtype=torch.float64)
    o_bias = torch.randn(CHANNELS, generator=generator, dtype=torch.float64)
    values = torch.matmul(v, o_weight.t().reshape(HEADS, HEAD_DIM, CHANNELS)) + o_bias / HEADS
    values = values.reshape(PROMPTS, HEADS * TOKENS, CHANNELS)
    tokens = LowRankTokens(
        image, probs, v, values, o_weight, o_bias, key, previous=previous, rstd=rstd, gain=gain, bias=bias
    )
    return tokens, probs, values


def _centre(u: torch.Tensor) -> torch.Tensor:
    return u - u.mean(dim=-1, keepdim=True)


def _levels():
    """Three blocks, each as (LowRankTokens, the centred LayerNorm input it stands for, built)."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    # Per-pixel offsets: image tokens with non-zero channel means, as real embeddings have.
    x = randn(PIXELS, CHANNELS) + randn(PIXELS, 1)
    image = ImageSide(x, randn(PIXELS, CHANNELS))
    tokens, probs, values = _block(generator, image)
    levels = [(tokens, _centre(x + probs.transpose(1, 2) @ values))]
    for index in (1, 2):
        previous, dense = levels[-1]
        rstd = torch.rand((PROMPTS, PIXELS), generator=generator, dtype=torch.float64) + 0.5
        gain, bias = randn(CHANNELS) + 1.0, randn(CHANNELS)
        keys = rstd[..., None] * (gain * dense) + bias  # the previous LayerNorm's output
        tokens, probs, values = _block(generator, image, previous, rstd, gain, bias, key=str(index))
        levels.append((tokens, _centre(keys + probs.transpose(1, 2) @ values)))
    return levels, generator


@pytest.mark.parametrize("level", [0, 1, 2])
def test_low_rank_tokens_equal_the_built_ones(level):
    levels, generator = _levels()
    tokens, dense = levels[level]

    def randn(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    rows = 2
    q = randn(PROMPTS, HEADS, rows, HEAD_DIM)
    weight = randn(HEADS * HEAD_DIM, CHANNELS)
    per_head = weight.view(HEADS, HEAD_DIM, CHANNELS)

    # Projections dotted with token vectors: q_j . W_h B[p].
    expected = torch.einsum("nhtd,hdc,npc->nhtp", q, per_head, dense).reshape(PROMPTS, HEADS * rows, PIXELS)
    torch.testing.assert_close(tokens.linear(q, weight, "linear"), expected)
    # A second call reads the per-image cache: same answer.
    torch.testing.assert_close(tokens.linear(q, weight, "linear"), expected)

    w = randn(CHANNELS)
    torch.testing.assert_close(tokens.vector(w, "vector"), dense @ w)

    # Attention pooling: sum_p A[j, p] W_h B[p].
    weights = torch.rand((PROMPTS, HEADS * rows, PIXELS), generator=generator, dtype=torch.float64)
    full = torch.einsum("njp,hdc,npc->njhd", weights, per_head, dense).view(
        PROMPTS, HEADS, rows, HEADS, HEAD_DIM
    )
    expected = torch.diagonal(full, dim1=1, dim2=3).permute(0, 3, 1, 2)
    torch.testing.assert_close(tokens.pool(weights, weight, HEADS, "pool"), expected)

    # LayerNorm statistics: |B|^2 and a quadratic form with a symmetric K.
    torch.testing.assert_close(tokens.quad(None, "norm"), (dense * dense).sum(-1))
    k = randn(CHANNELS, CHANNELS)
    k = k + k.t()
    torch.testing.assert_close(tokens.quad(k, "quad"), (dense * (dense @ k)).sum(-1))

    gain, bias = randn(CHANNELS), randn(CHANNELS)
    rstd = torch.rand((PROMPTS, PIXELS), generator=generator, dtype=torch.float64) + 0.5
    expected = (rstd[..., None] * (gain * dense) + bias).mean(-1)
    torch.testing.assert_close(tokens.channel_mean_of_tokens(gain, bias, rstd), expected)


def test_centring_map():
    gain = torch.randn(7, dtype=torch.float64)
    u = torch.randn(3, 7, dtype=torch.float64)
    torch.testing.assert_close(u @ centring_map(gain).t(), _centre(gain * u))
