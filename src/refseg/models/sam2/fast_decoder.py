"""A faster SAM2 point-grid decoder with the same outputs as ``Sam2Model.forward``.

Same weights, same mathematics, less work. The stock mask decoder copies the image
embedding once per prompt and runs every 4096 x 256 image-token projection per prompt. Here:

1. **Once per image**: the no-mask embedding and positional encoding are added, the first
   two-way block's tokens -> image keys/values and image -> tokens queries are projected
   (image tokens are the same for every prompt until that block updates them), and the
   high-resolution features are laid out for the upscaling below. Nothing is
   ``repeat_interleave``d: per-image tensors are broadcast.
2. **Attention by its few tokens**: each prompt has only 8 tokens, so wherever the image side
   would need a 4096-row projection, the projection is moved onto the 8 tokens instead:
   ``(q Wk_h) . (keys + pe)`` for the scores (the constant ``q . bk`` cancels in the
   softmax), ``(P keys) Wv_h^T + bv`` for the values (rows of ``P`` sum to 1), and
   ``(k Wq_h) . (keys + pe) + k . bq`` for the image queries. The image -> tokens output
   projection is folded into the 8 values (``P (V Wo)`` instead of ``(P V) Wo``).
3. **Best of three first**: the final token -> image attention runs only for the tokens
   used (IoU and the three multimask tokens), the IoU head runs on them, the best of the
   three masks and the IoU threshold are applied, and only the chosen mask of each surviving
   prompt is upscaled. The two 2x2 transposed convolutions are matrix products on
   channels-last features whose pixel order is undone only on the final one-channel mask.
4. **Small chunks**: prompts go through in chunks of at most :data:`PROMPT_CHUNK`, so the
   per-chunk temporaries stay small instead of multi-GiB.
5. **No page faults**: every chunk allocates and frees tens-of-MiB temporaries, which glibc
   would hand straight back to the kernel and fault in again; on CPU the first decode calls
   :func:`refseg.models.malloc.retain_freed_memory` so they are reused.
6. **conv1 through the LayerNorms** (float32): see :class:`_Conv1Chain`.
7. **Image tokens never built** (float32): from the first block on, each prompt's image tokens
   are the shared ones plus low-rank attention updates and LayerNorms; the transformer works
   on that description (:mod:`refseg.models.low_rank_tokens`), and the trace it leaves is
   what the conv1 chain needs. Under autocast the tokens are built (items 2 and 4).
8. **Upscaling in pixel tiles**: every upscaling step is per pixel, so
   :data:`PIXEL_TILE` low-resolution pixels go through all of them at a time.

Outputs equal the stock path to float32 rounding (the tests compare both on the tiny model).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Sam2Model
from transformers.models.sam2.modeling_sam2 import Sam2Attention

from ..base import Proposals
from ..malloc import retain_freed_memory
from .low_rank_tokens import ImageSide, LowRankTokens
from .proposer import Sam2ImageEmbedding, empty_proposals

logger = logging.getLogger(__name__)

# Prompts per transformer chunk (at most the caller's batch_size), and prompts upscaled
# together. Chosen on CPU timings of the full-size decoder: 8 and 16 run at the same speed,
# 8 holds half the per-prompt image tokens (4 MiB each, several copies per block).
PROMPT_CHUNK = 8
UPSCALE_CHUNK = 4
# Low-resolution pixels upscaled at a time (of 64 x 64).
PIXEL_TILE = 1024
# Compute conv1 through the LayerNorm chain in float32 (see _Conv1Chain); False uses the
# direct product (for comparison: benchmarks/bench_levers.py, tests).
CONV1_CHAIN = True
# Run the two-way transformer on a low-rank description of each prompt's image tokens instead
# of the tokens themselves (float32 with the conv1 chain only; see low_rank_tokens.py).
LOW_RANK_TOKENS = True


@dataclass
class _Conv1Chain:
    """The first upscaling convolution pushed back through the image-side LayerNorms.

    Block l of the two-way transformer updates the image tokens by a low-rank term and a
    LayerNorm: ``U_l = keys_{l-1} + P_l^T V_l`` (``keys_{-1}`` = X, the shared image tokens;
    ``P_l^T V_l`` has rank heads * T), then ``keys_l = r_l * (U_l - m_l) diag(g_l) + b_l`` with
    per-row mean ``m_l`` and reciprocal standard deviation ``r_l``. For conv1's matrix W,
    expanding the chain from the last block back gives

        keys_{L-1} W = R_0 * [X A_0 + sum_l c_l * (P_l^T (V_l A_l) - m_l s_l)
                              + sum_{l>=1} c_l * t_l] + b_{L-1} W

    with ``A_{L-1} = diag(g_{L-1}) W``, ``A_{l-1} = diag(g_{l-1}) A_l``, ``s_l = 1^T A_l``,
    ``t_l = b_{l-1} A_l``, ``R_l = r_l ... r_{L-1}`` and ``c_l = R_l / R_0``. ``X A_0`` is the
    same for every prompt (block 0's mean term joins it: ``m_0`` is linear in X and ``P_0^T V_0``),
    so per prompt conv1 costs products of total rank L * heads * T + 2(L - 1) (130 for SAM2) instead of a full C x 4C/4 (256 x 256) product: about half the
    multiply-adds. Only used in float32: under autocast the mean subtraction would be
    rounded to the low precision before it cancels.

    Attributes:
        image_product: (1, HW, 4 * C/4) ``X A_0``.
        maps: ``A_l`` per block, (C, 4 * C/4).
        row_sums: ``s_l`` per block, (4 * C/4,).
        bias_terms: ``t_l`` for blocks 1..L-1, (4 * C/4,).
        feat_s1: (1, HW, 4 * C/4) the context's ``feat_s1`` + ``b_{L-1} W``.
    """

    image_product: torch.Tensor
    maps: list[torch.Tensor]
    row_sums: list[torch.Tensor]
    bias_terms: list[torch.Tensor]
    feat_s1: torch.Tensor


@dataclass
class _ImageTrace:
    """What :class:`_Conv1Chain` needs of each prompt's pass through the blocks (n prompts).

    Attributes:
        probs: per block, (n, heads * T, HW) image -> tokens attention weights ``P_l``.
        values: per block, (n, heads * T, C) the values with the output projection folded in, ``V_l``.
        means, rstds: per block, (n, HW, 1) the LayerNorm statistics ``m_l`` and ``r_l``.
    """

    probs: list[torch.Tensor]
    values: list[torch.Tensor]
    means: list[torch.Tensor]
    rstds: list[torch.Tensor]


@dataclass
class _ImageContext:
    """Per-image tensors shared by every prompt (image tokens are row-major over H x W).

    Attributes:
        keys: (1, HW, C) image embedding + no-mask embedding.
        key_pe: (1, HW, C) image positional encoding.
        first_k, first_v: (1, heads, HW, d) first block, tokens -> image keys and values.
        first_image_q: (heads, d, HW) first block, image -> tokens queries, per head.
        conv1_weight: (C, 4 * C/4) ``upscale_conv1`` as a matrix, output order (i, j, c).
        conv2_weight: (C/4, 4 * C/8) ``upscale_conv2`` likewise.
        feat_s1: (1, HW, 4 * C/4) ``conv_s1`` features + conv1 bias, in conv1's output order.
        feat_s0: (1, 4HW, 4 * C/8) ``conv_s0`` features + conv2 bias, in conv2's output order.
        chain: the first upscaling convolution pushed back through the transformer's image-side
            LayerNorms (see :class:`_Conv1Chain`); None when the decoder runs under autocast.
        low_rank: the image side of the low-rank transformer (see low_rank_tokens.py); None
            when the tokens are built (no chain, or :data:`LOW_RANK_TOKENS` off).
    """

    keys: torch.Tensor
    key_pe: torch.Tensor
    first_k: torch.Tensor
    first_v: torch.Tensor
    first_image_q: torch.Tensor
    conv1_weight: torch.Tensor
    conv2_weight: torch.Tensor
    feat_s1: torch.Tensor
    feat_s0: torch.Tensor
    height: int
    width: int
    chain: _Conv1Chain | None = None
    low_rank: ImageSide | None = None


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, heads * d) -> (b, heads, n, d)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(b, heads, n, d) -> (b, n, heads * d)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _per_head(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A projection weight (heads * d, C) as (heads, d, C)."""
    return weight.view(heads, -1, weight.shape[-1])


def _conv_as_matrix(conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    """Weight (Cin, Cout, 2, 2) of a 2x2 stride-2 transposed conv as (Cin, 4 * Cout), order (i, j, Cout)."""
    weight = conv.weight
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _prepare_image(model: Sam2Model, embedding: Sam2ImageEmbedding) -> _ImageContext:
    decoder = model.mask_decoder
    no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    image = embedding.image_embeddings + no_mask
    _, _, height, width = image.shape
    keys = image.flatten(2).transpose(1, 2).contiguous()
    key_pe = model.get_image_wide_positional_embeddings().flatten(2).transpose(1, 2).to(keys.dtype)

    first = decoder.transformer.layers[0]
    cross, back = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    keys_with_pe = keys + key_pe
    first_k = _split_heads(cross.k_proj(keys_with_pe), cross.num_attention_heads).contiguous()
    first_v = _split_heads(cross.v_proj(keys), cross.num_attention_heads).contiguous()
    first_image_q = back.q_proj(keys_with_pe)[0]
    first_image_q = (
        first_image_q.view(height * width, back.num_attention_heads, -1).permute(1, 2, 0).contiguous()
    )

    # High-resolution features in the pixel order of the matrix-product convolutions:
    # conv1 output pixel (2Y + i, 2X + j) sits at row Y*W + X, column block (i, j);
    # conv2 output pixel (4Y + 2i + i', 4X + 2j + j') at row (Y, X, i, j), block (i', j').
    feat_s1 = embedding.feat_s1  # (1, C/4, 2H, 2W)
    c4 = feat_s1.shape[1]
    feat_s1 = feat_s1.view(1, c4, height, 2, width, 2).permute(0, 2, 4, 3, 5, 1)
    feat_s1 = (feat_s1 + decoder.upscale_conv1.bias.to(feat_s1.dtype)).reshape(1, height * width, 4 * c4)
    feat_s0 = embedding.feat_s0  # (1, C/8, 4H, 4W)
    c8 = feat_s0.shape[1]
    feat_s0 = feat_s0.view(1, c8, height, 2, 2, width, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
    feat_s0 = (feat_s0 + decoder.upscale_conv2.bias.to(feat_s0.dtype)).reshape(1, 4 * height * width, 4 * c8)
    conv1_weight = _conv_as_matrix(decoder.upscale_conv1)
    chain = low_rank = None
    if CONV1_CHAIN and not torch.is_autocast_enabled(keys.device.type) and keys.dtype == torch.float32:
        chain = _conv1_chain(decoder, keys, conv1_weight, feat_s1)
        if LOW_RANK_TOKENS:
            low_rank = ImageSide(keys[0], key_pe[0])
    return _ImageContext(
        keys=keys,
        key_pe=key_pe,
        first_k=first_k,
        first_v=first_v,
        first_image_q=first_image_q,
        conv1_weight=conv1_weight,
        conv2_weight=_conv_as_matrix(decoder.upscale_conv2),
        feat_s1=feat_s1,
        feat_s0=feat_s0,
        height=height,
        width=width,
        chain=chain,
        low_rank=low_rank,
    )


def _conv1_chain(
    decoder: torch.nn.Module, keys: torch.Tensor, conv1_weight: torch.Tensor, feat_s1: torch.Tensor
) -> _Conv1Chain:
    """Per-image part of :class:`_Conv1Chain` for image tokens ``keys`` (1, HW, C)."""
    norms = [layer.layer_norm4 for layer in decoder.transformer.layers]
    maps = [conv1_weight * norms[-1].weight[:, None]]
    for norm in reversed(norms[:-1]):
        maps.insert(0, maps[0] * norm.weight[:, None])
    row_sums = [m.sum(dim=0) for m in maps]
    # Block 0's mean is linear in its inputs: m_0 = mean(X) + P_0^T mean(V_0), so its term
    # joins X A_0 here and V_0 A_0 per prompt instead of being a column of its own.
    image_mean = keys.mean(dim=-1, keepdim=True)
    return _Conv1Chain(
        image_product=keys @ maps[0] - image_mean * row_sums[0],
        maps=maps,
        row_sums=row_sums,
        bias_terms=[norm.bias @ m for norm, m in zip(norms[:-1], maps[1:], strict=True)],
        feat_s1=feat_s1 + norms[-1].bias @ conv1_weight,
    )


class _Conv1ThroughChain:
    """conv1 (+ its bias and the s1 features) of the final image tokens of a chunk's prompts
    ``rows``, from the trace instead of the tokens themselves, one pixel range at a time.

    The per-prompt right-hand sides (token values through the chain's maps) are computed once
    here; :meth:`pixels` then costs the rank-(L * heads * T + 2(L - 1)) products for its pixels.
    """

    def __init__(self, chain: _Conv1Chain, trace: _ImageTrace, rows: slice | torch.Tensor) -> None:
        self.chain = chain
        values = trace.values[0][rows]  # (k, heads * T, C)
        self.first_right = values @ chain.maps[0] - values.mean(dim=-1, keepdim=True) * chain.row_sums[0]
        k = values.shape[0]
        self.probs = [p[rows] for p in trace.probs]  # (k, heads * T, HW) each
        self.means = [m[rows] for m in trace.means]  # (k, HW, 1) each
        self.rstds = [r[rows] for r in trace.rstds]
        # Token rows of P_l, then the mean and bias columns (block l >= 1): (k, heads * T + 2, 4 * C/4).
        self.rights = [
            torch.cat(
                [
                    trace.values[index][rows] @ chain.maps[index],
                    chain.row_sums[index].expand(k, 1, -1),
                    chain.bias_terms[index - 1].expand(k, 1, -1),
                ],
                dim=1,
            )
            for index in range(1, len(trace.probs))
        ]

    def pixels(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the (k, HW, 4 * C/4) conv1 output.

        ``R_0 [X A_0 + ...] + feat_s1`` with ``R_0`` folded into the small left factors (heads * T
        values per pixel instead of 4 * C/4) and into the one pass that starts the output."""
        chain, span = self.chain, slice(start, stop)
        rstds = [r[:, span].transpose(1, 2) for r in self.rstds]  # (k, 1, n) each
        # scales[l] = r_l ... r_{L-1} = R_0 * c_l (see _Conv1Chain)
        scales = [rstds[-1]]
        for r in reversed(rstds[:-1]):
            scales.insert(0, scales[0] * r)
        x = torch.addcmul(chain.feat_s1[:, span], chain.image_product[:, span], scales[0].transpose(1, 2))
        x.baddbmm_((self.probs[0][:, :, span] * scales[0]).transpose(1, 2), self.first_right)
        for index in range(1, len(self.probs)):
            scale = scales[index]
            left = torch.cat(
                [
                    self.probs[index][:, :, span],
                    -self.means[index][:, span].transpose(1, 2),
                    torch.ones_like(scale),
                ],
                dim=1,
            )
            x.baddbmm_(left.mul_(scale).transpose(1, 2), self.rights[index - 1])
        return x


def _tokens_to_shared_image(
    attention: Sam2Attention, tokens_with_pe: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Tokens (n, T, C) attend to image keys/values (1, heads, HW, d) shared by all prompts:
    every prompt's tokens are one query set. Returns (n, T, C)."""
    n, tokens, _ = tokens_with_pe.shape
    heads = attention.num_attention_heads
    q = _split_heads(attention.q_proj(tokens_with_pe), heads)  # (n, heads, T, d)
    q = q.transpose(0, 1).reshape(1, heads, n * tokens, -1)
    out = F.scaled_dot_product_attention(q, k, v, scale=attention.scaling)
    out = out.view(heads, n, tokens, -1).transpose(0, 1)  # (n, heads, T, d)
    return attention.o_proj(_merge_heads(out))


def _tokens_to_image(
    attention: Sam2Attention, tokens_with_pe: torch.Tensor, keys: torch.Tensor, keys_with_pe: torch.Tensor
) -> torch.Tensor:
    """Tokens (n, T, C) attend to each prompt's image tokens (n, HW, C), projecting the T
    queries instead of the HW keys and values. Returns (n, T, C)."""
    n, tokens, channels = tokens_with_pe.shape
    heads = attention.num_attention_heads
    q = _split_heads(attention.q_proj(tokens_with_pe), heads) * attention.scaling  # (n, heads, T, d)
    # scores_h = q_h (Wk_h x + bk_h) over image tokens x; q_h . bk_h is constant along the softmax.
    q_through_k = torch.matmul(q, _per_head(attention.k_proj.weight, heads)).view(n, heads * tokens, channels)
    probs = torch.bmm(q_through_k, keys_with_pe.transpose(1, 2)).softmax(dim=-1)  # (n, heads*T, HW)
    # out_h = P_h (Wv_h x + bv_h) = (P_h x) Wv_h^T + bv_h since rows of P_h sum to 1.
    pooled = torch.bmm(probs, keys).view(n, heads, tokens, channels)
    v_weight = _per_head(attention.v_proj.weight, heads).transpose(1, 2)  # (heads, C, d)
    out = torch.matmul(pooled, v_weight) + attention.v_proj.bias.view(heads, 1, -1)
    return attention.o_proj(_merge_heads(out))


def _image_to_tokens_probs(
    attention: Sam2Attention,
    tokens_with_pe: torch.Tensor,
    keys_with_pe: torch.Tensor | None,
    image_q: torch.Tensor | None,
) -> torch.Tensor:
    """Attention weights of image queries over each prompt's T tokens, as (n, heads * T, HW).

    Either ``image_q`` (heads, d, HW), image queries shared by all prompts, or
    ``keys_with_pe`` (n, HW, C), per-prompt image tokens whose query projection is moved onto
    the tokens: q_h(x) . k = (Wq_h x + bq_h) . k = x . (Wq_h^T k) + bq_h . k.
    """
    n, tokens, channels = tokens_with_pe.shape
    heads = attention.num_attention_heads
    k = _split_heads(attention.k_proj(tokens_with_pe), heads) * attention.scaling  # (n, heads, T, d)
    if image_q is not None:
        # One product per prompt, all heads at once, straight into prompt-major order.
        k = k.to(image_q.dtype)
        scores = torch.empty(
            (n, heads, tokens, image_q.shape[-1]), dtype=image_q.dtype, device=image_q.device
        )
        for prompt in range(n):
            torch.bmm(k[prompt], image_q, out=scores[prompt])
        return scores.softmax(dim=2).view(n, heads * tokens, -1)
    k_through_q = torch.matmul(k, _per_head(attention.q_proj.weight, heads)).view(n, heads * tokens, channels)
    k_dot_bias = (k * attention.q_proj.bias.view(heads, 1, -1)).sum(-1).view(n, heads * tokens, 1)
    scores = torch.baddbmm(k_dot_bias, k_through_q, keys_with_pe.transpose(1, 2)).view(n, heads, tokens, -1)
    return scores.softmax(dim=2).view(n, heads * tokens, -1)


def _image_to_tokens_values(
    attention: Sam2Attention, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The T token values: as projected, (n, heads, T, d), and with the output projection
    folded in, (n, heads * T, C), so that ``o_proj(P V) = P^T``-weighted sums of these rows
    (see :func:`_image_to_tokens_update`)."""
    n, tokens_count, _ = tokens.shape
    heads = attention.num_attention_heads
    v = _split_heads(attention.v_proj(tokens), heads)  # (n, heads, T, d)
    o_weight = attention.o_proj.weight.t().reshape(
        heads, -1, attention.o_proj.weight.shape[0]
    )  # (heads, d, C)
    # Each head's weights sum to 1 over its tokens, so bias / heads per value row adds the bias once.
    v_out = torch.matmul(v, o_weight) + attention.o_proj.bias / heads  # (n, heads, T, C)
    return v, v_out.reshape(n, heads * tokens_count, -1)


def _image_to_tokens_update(
    probs: torch.Tensor, values: torch.Tensor, keys: torch.Tensor, in_place: bool
) -> torch.Tensor:
    """``keys + o_proj(P V)`` as ``keys + P^T values``. (n, HW, C).

    ``in_place``: accumulate into ``keys`` (n, HW, C) itself, which must then be the caller's own
    per-prompt tensor, not a broadcast view."""
    values = values.to(probs.dtype)
    if in_place:
        return keys.baddbmm_(probs.transpose(1, 2).to(keys.dtype), values.to(keys.dtype))
    return torch.baddbmm(keys, probs.transpose(1, 2), values)


def _prompt_tokens(decoder: torch.nn.Module, sparse: torch.Tensor) -> torch.Tensor:
    """The 6 + S tokens of each prompt (object score, IoU, 4 mask tokens, prompt): (n, T, C)."""
    output_tokens = torch.cat(
        [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0
    )
    n = sparse.shape[0]
    return torch.cat([output_tokens.expand(n, -1, -1), sparse], dim=1).to(decoder.iou_token.weight.dtype)


def _token_self_attention(
    layer: torch.nn.Module, queries: torch.Tensor, point_pe: torch.Tensor
) -> torch.Tensor:
    """A two-way block's self-attention of the tokens and first LayerNorm (small): the module
    itself, on 1 x n x T x C."""
    if layer.skip_first_layer_pe:
        attn_out, _ = layer.self_attn(query=queries[None], key=queries[None], value=queries[None])
        queries = attn_out[0]
    else:
        query = (queries + point_pe)[None]
        attn_out, _ = layer.self_attn(query=query, key=query, value=queries[None])
        queries = queries + attn_out[0]
    return layer.layer_norm1(queries)


def _run_transformer(
    model: Sam2Model, context: _ImageContext, sparse: torch.Tensor, outputs: list[int]
) -> tuple[torch.Tensor, torch.Tensor, _ImageTrace | None]:
    """The two-way transformer for n prompts.

    Args:
        sparse: (n, S, C) sparse prompt embeddings.
        outputs: which of the 6 + S tokens (object score, IoU, 4 mask tokens, prompt) to
            return; only those go through the final token -> image attention.

    Returns:
        queries: (n, len(outputs), C) those output tokens.
        keys: (n, HW, C) updated image tokens.
        trace: what ``context.chain`` needs to compute conv1 without ``keys`` (None without a chain).
    """
    decoder = model.mask_decoder
    n = sparse.shape[0]
    point_pe = _prompt_tokens(decoder, sparse)
    queries = point_pe
    keys = context.keys
    # Under autocast the per-prompt image tokens are kept in the autocast dtype: each matrix
    # product would cast them anyway, so they are cast once per block instead of per product.
    device_type = keys.device.type
    low_precision = torch.is_autocast_enabled(device_type)
    key_pe = context.key_pe.to(torch.get_autocast_dtype(device_type)) if low_precision else context.key_pe
    trace = _ImageTrace([], [], [], []) if context.chain is not None else None
    for index, layer in enumerate(decoder.transformer.layers):
        queries = _token_self_attention(layer, queries, point_pe)

        cross, back = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if index == 0:
            keys_with_pe = None
            attn_out = _tokens_to_shared_image(cross, queries + point_pe, context.first_k, context.first_v)
        else:
            keys_with_pe = keys + key_pe
            attn_out = _tokens_to_image(cross, queries + point_pe, keys, keys_with_pe)
        queries = layer.layer_norm2(queries + attn_out)
        queries = layer.layer_norm3(queries + layer.mlp(queries))

        image_q = context.first_image_q if index == 0 else None
        probs = _image_to_tokens_probs(back, queries + point_pe, keys_with_pe, image_q)
        del keys_with_pe  # (n, HW, C) each: drop what is no longer needed before the next one
        _, values = _image_to_tokens_values(back, queries)
        # Block 0's keys are the shared image tokens (broadcast, copied by the update); later
        # blocks own theirs (a LayerNorm output), so the update accumulates into them.
        updated = _image_to_tokens_update(probs, values, keys.expand(n, -1, -1), in_place=index > 0)
        norm = layer.layer_norm4
        if trace is not None:
            keys, mean, rstd = torch.native_layer_norm(
                updated, norm.normalized_shape, norm.weight, norm.bias, norm.eps
            )
            trace.probs.append(probs)
            trace.values.append(values)
            trace.means.append(mean)
            trace.rstds.append(rstd)
        else:
            keys = norm(updated)
        del updated
        if low_precision:
            keys = keys.to(key_pe.dtype)

    # The final attention is per query token: run it on the wanted tokens only.
    queries, point_pe = queries[:, outputs], point_pe[:, outputs]
    final = decoder.transformer.final_attn_token_to_image
    attn_out = _tokens_to_image(final, queries + point_pe, keys, keys + key_pe)
    queries = decoder.transformer.layer_norm_final_attn(queries + attn_out)
    return queries, keys, trace


def _low_rank_scores(
    vectors: torch.Tensor,
    weight: torch.Tensor,
    image: ImageSide,
    centred: LowRankTokens,
    norm: torch.nn.LayerNorm,
    rstd: torch.Tensor,
    key: tuple,
) -> torch.Tensor:
    """``v_j . W_h (keys[p] + pe[p])`` for token vectors ``vectors`` (n, heads, T, d), a
    projection weight W (heads * d, C) and the image tokens ``keys = r * (g . B) + b`` of a
    LayerNorm (``norm``, per-pixel ``rstd`` (n, HW)) over ``centred`` = B, without the term
    ``v_j . W_h b``, which is the same for every pixel: (n, heads * T, HW)."""
    gained = image.memo(("gain", key), lambda: weight * norm.weight)
    scores = centred.linear(vectors, gained, key).mul_(rstd[:, None, :])
    return image.heads_dot(vectors, weight, key, source="pe", out=scores)


def _tokens_to_low_rank_image(
    attention: Sam2Attention,
    tokens_with_pe: torch.Tensor,
    image: ImageSide,
    centred: LowRankTokens,
    norm: torch.nn.LayerNorm,
    rstd: torch.Tensor,
    key: tuple,
) -> torch.Tensor:
    """:func:`_tokens_to_image` on the image tokens ``r * (g . B) + b`` of a LayerNorm (``norm``,
    per-pixel ``rstd`` (n, HW)) over ``centred`` = B. Returns (n, T, C)."""
    n, tokens, _ = tokens_with_pe.shape
    heads = attention.num_attention_heads
    gain, bias = norm.weight, norm.bias
    q = _split_heads(attention.q_proj(tokens_with_pe), heads) * attention.scaling  # (n, heads, T, d)
    # Scores q . Wk (r g.B + b + pe) + q . bk: the b and bk terms are constant along the softmax.
    scores = _low_rank_scores(q, attention.k_proj.weight, image, centred, norm, rstd, (key, "k"))
    probs = scores.softmax(dim=-1)  # (n, heads * T, HW)
    # Values Wv (r g.B + b) + bv; each row of probs sums to 1.
    v_weight = attention.v_proj.weight
    v_gain = image.memo(("gain", key, "v"), lambda: v_weight * gain)
    pooled = centred.pool(probs.mul_(rstd[:, None, :]), v_gain, heads, (key, "v"))  # (n, heads, T, d)
    pooled = pooled + (v_weight @ bias + attention.v_proj.bias).view(heads, 1, -1)
    return attention.o_proj(_merge_heads(pooled))


def _run_transformer_low_rank(
    model: Sam2Model, context: _ImageContext, sparse: torch.Tensor, outputs: list[int]
) -> tuple[torch.Tensor, None, _ImageTrace]:
    """:func:`_run_transformer` without building any prompt's image tokens (float32, with
    ``context.low_rank``): attention, LayerNorm statistics and the trace for the conv1 chain
    all come from :class:`LowRankTokens`. Returns (queries, None, trace)."""
    decoder = model.mask_decoder
    image = context.low_rank
    assert image is not None
    n = sparse.shape[0]
    point_pe = _prompt_tokens(decoder, sparse)
    queries = point_pe
    trace = _ImageTrace([], [], [], [])
    centred: LowRankTokens | None = None
    norm: torch.nn.LayerNorm | None = None
    rstd: torch.Tensor | None = None
    channels = context.keys.shape[-1]
    for index, layer in enumerate(decoder.transformer.layers):
        queries = _token_self_attention(layer, queries, point_pe)

        cross, back = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if index == 0:
            attn_out = _tokens_to_shared_image(cross, queries + point_pe, context.first_k, context.first_v)
        else:
            attn_out = _tokens_to_low_rank_image(
                cross, queries + point_pe, image, centred, norm, rstd, (index, "t2i")
            )
        queries = layer.layer_norm2(queries + attn_out)
        queries = layer.layer_norm3(queries + layer.mlp(queries))

        if index == 0:
            probs = _image_to_tokens_probs(back, queries + point_pe, None, context.first_image_q)
        else:
            # Scores k . (Wq (r g.B + b + pe) + bq), softmax over each head's tokens.
            heads = back.num_attention_heads
            k = _split_heads(back.k_proj(queries + point_pe), heads) * back.scaling  # (n, heads, T, d)
            q_weight = back.q_proj.weight
            scores = _low_rank_scores(k, q_weight, image, centred, norm, rstd, (index, "i2t"))
            # The pixel-constant term k . (Wq b + bq) does not cancel: the softmax is over tokens.
            constant = (k * (q_weight @ norm.bias + back.q_proj.bias).view(heads, 1, -1)).sum(
                -1, keepdim=True
            )
            grid = scores.view(n, heads, -1, scores.shape[-1]).add_(constant)
            probs = grid.softmax(dim=2).view(n, -1, scores.shape[-1])
        v, values = _image_to_tokens_values(back, queries)  # (n, heads, T, d), (n, heads * T, C)
        new = LowRankTokens(
            image,
            probs,
            v,
            values,
            back.o_proj.weight,
            back.o_proj.bias,
            key=str(index),
            previous=centred,
            rstd=rstd,
            gain=None if norm is None else norm.weight,
            bias=None if norm is None else norm.bias,
        )
        # LayerNorm input U = keys + V^T P: its mean, and its variance from the centred B.
        value_means = new.weighted_rows(new.value_mean)
        if centred is None:
            mean = image.mean + value_means
        else:
            mean = centred.channel_mean_of_tokens(norm.weight, norm.bias, rstd).add_(value_means)
        norm = layer.layer_norm4
        variance = new.quad(None, (index, "variance")).div_(channels).clamp_(min=0.0)
        rstd = variance.add_(norm.eps).rsqrt_()
        centred = new
        trace.probs.append(probs)
        trace.values.append(values)
        trace.means.append(mean[..., None])
        trace.rstds.append(rstd[..., None])

    queries, point_pe = queries[:, outputs], point_pe[:, outputs]
    final = decoder.transformer.final_attn_token_to_image
    attn_out = _tokens_to_low_rank_image(final, queries + point_pe, image, centred, norm, rstd, ("final",))
    queries = decoder.transformer.layer_norm_final_attn(queries + attn_out)
    return queries, None, trace


def _upscale_masks(
    model: Sam2Model,
    context: _ImageContext,
    keys: torch.Tensor | None,
    hyper: torch.Tensor,
    trace: _ImageTrace | None,
    rows: slice | torch.Tensor,
) -> torch.Tensor:
    """Upscale k prompts' final image tokens and take each one's chosen mask.

    Args:
        keys: (n, HW, C) final image tokens of the chunk's prompts (None with a trace).
        hyper: (k, C/8) each upscaled prompt's hypernetwork output for its chosen mask.
        trace: the chunk's trace, when ``context.chain`` computes conv1 (then ``keys`` is unused).
        rows: the k prompts of the chunk to upscale.

    Returns:
        (k, 4H, 4W) mask logits.
    """
    norm = model.mask_decoder.upscale_layer_norm
    k = hyper.shape[0]
    height, width = context.height, context.width
    pixels = height * width
    if context.chain is not None and trace is not None:
        through_chain = _Conv1ThroughChain(context.chain, trace, rows)
    else:
        keys = keys[rows]
        dtype = keys.dtype
        conv1_weight = context.conv1_weight.to(dtype).expand(k, -1, -1)
    conv2_weight = context.conv2_weight
    masks = None
    # A range of low-resolution pixels at a time: every step below is per pixel, and a range's
    # intermediates stay in cache instead of streaming 16 MiB per prompt through memory.
    for start in range(0, pixels, PIXEL_TILE):
        stop = min(start + PIXEL_TILE, pixels)
        count = stop - start
        # conv1 (+ bias + s1): rows (Y, X), columns (i, j, c); LayerNorm is per pixel, so order is free.
        if context.chain is not None and trace is not None:
            x = through_chain.pixels(start, stop)
        else:
            x = torch.baddbmm(context.feat_s1[:, start:stop].to(dtype), keys[:, start:stop], conv1_weight)
        x = x.view(k, 4 * count, -1)
        # Both GELUs are in place on fresh tensors (exact erf GELU, as nn.GELU()).
        x = torch.ops.aten.gelu_(F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
        # conv2 (+ bias + s0): rows (Y, X, i, j), columns (i', j', c).
        feat_s0 = context.feat_s0[:, 4 * start : 4 * stop].to(x.dtype)
        x = torch.baddbmm(feat_s0, x, conv2_weight.to(x.dtype).expand(k, -1, -1))
        x = torch.ops.aten.gelu_(x).view(k, 16 * count, -1)
        # Pixel order (Y, X, i, j, i', j'). One matrix-vector product per prompt: a batched
        # product with one column ran ~3x slower (0.9 vs 0.3 ms for 4 prompts' 16 K x 32).
        if masks is None:
            masks = torch.empty((k, 16 * pixels), dtype=x.dtype, device=x.device)
        for prompt in range(k):
            torch.mv(x[prompt], hyper[prompt].to(x.dtype), out=masks[prompt, 16 * start : 16 * stop])
    masks = masks.view(k, height, width, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
    return masks.reshape(k, 4 * height, 4 * width)


@torch.inference_mode()
def decode_points_fast(
    model: Sam2Model,
    embedding: Sam2ImageEmbedding,
    points: torch.Tensor,
    *,
    batch_size: int,
    iou_threshold: float,
) -> Proposals:
    """Same contract and outputs as :func:`refseg.models.sam2.decode_points_stock`.

    Args:
        model: the SAM2 model (its device is where the work happens).
        embedding: the image's features from :meth:`Sam2Proposer.embed`.
        points: (P, 2) float (x, y) in the model's input pixels.
        batch_size: at most this many prompts per transformer chunk (also capped at
            :data:`PROMPT_CHUNK`); compute only.
        iou_threshold: keep a prompt when its best predicted IoU is > this.

    Returns:
        Proposals of the surviving prompts in prompt order, float32 on the CPU.
    """
    decoder = model.mask_decoder
    device = embedding.image_embeddings.device
    if device.type == "cpu":
        retain_freed_memory()
    context = _prepare_image(model, embedding)
    first_mask = 1  # the multimask outputs are mask tokens 1..3 (token 0 is the single mask)
    # Output tokens used: the IoU token (1) and the multimask tokens (2 + 1 .. 2 + 3).
    outputs = [1, *range(2 + first_mask, 2 + decoder.num_mask_tokens)]
    hypernetworks = decoder.output_hypernetworks_mlps[first_mask:]
    chunk_size = max(1, min(batch_size, PROMPT_CHUNK))
    # Survivors' logits are written straight into one buffer (no list + cat: that doubled the
    # peak at 268 MB for 1024 prompts).
    mask_size = 4 * context.height
    logits = torch.empty((points.shape[0], mask_size, 4 * context.width), dtype=torch.float32)
    filled = 0
    iou_parts, point_parts = [], []
    for start in range(0, points.shape[0], chunk_size):
        chunk = points[start : start + chunk_size].to(device=device, dtype=torch.float32)
        n = chunk.shape[0]
        sparse, _ = model.prompt_encoder(
            input_points=chunk.view(1, n, 1, 2),
            input_labels=torch.ones((1, n, 1), dtype=torch.int32, device=device),
            input_boxes=None,
            input_masks=None,
        )
        run = _run_transformer_low_rank if context.low_rank is not None else _run_transformer
        queries, keys, trace = run(model, context, sparse[0], outputs)
        if trace is not None:
            keys = None  # the chain computes conv1 from the trace: 4 MiB per prompt freed

        iou = decoder.iou_prediction_head(queries[:, 0])[:, first_mask:]  # (n, 3)
        best_iou, best_index = iou.max(dim=1)
        kept = (best_iou > iou_threshold).nonzero().squeeze(1)
        if kept.numel() == 0:
            continue
        point_parts.append(chunk[kept].float().cpu())
        iou_parts.append(best_iou[kept].float().cpu())
        mask_tokens = queries[kept, 1:]  # (k, 3, C)
        chosen = best_index[kept]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(hypernetworks)], dim=1)[
            torch.arange(kept.numel(), device=device), chosen
        ]  # (k, C/8)
        all_kept = kept.numel() == n
        for part in range(0, kept.numel(), UPSCALE_CHUNK):
            # When every prompt survives, a slice (a view) instead of a gathered copy.
            rows = slice(part, part + UPSCALE_CHUNK) if all_kept else kept[part : part + UPSCALE_CHUNK]
            masks = _upscale_masks(model, context, keys, hyper[part : part + UPSCALE_CHUNK], trace, rows)
            logits[filled : filled + masks.shape[0]] = masks
            filled += masks.shape[0]
    if not filled:
        return empty_proposals(mask_size)
    # A view of the buffer when most prompts survived; a copy when most did not, so the rest of
    # the buffer is not held through the later stages.
    kept_logits = logits[:filled] if 2 * filled > points.shape[0] else logits[:filled].clone()
    return Proposals(kept_logits, torch.cat(iou_parts), torch.cat(point_parts))


CHECK_POINTS = ((100.0, 200.0), (600.0, 300.0), (900.0, 900.0))


@torch.inference_mode()
def fast_or_stock(model: Sam2Model, tolerance: float = 1e-4) -> str:
    """Use the fast decoder if it reproduces ``Sam2Model.forward`` on a random embedding.

    The fast decoder is written against transformers' SAM2 mask decoder as of transformers 5;
    on another version a difference would show here (three prompts against random O(1)
    features: ~0.3 s on 2 CPU cores).

    Returns:
        "fast", or "stock" with a warning naming the difference.
    """
    from .proposer import decode_points_stock

    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    channels = model.mask_decoder.config.hidden_size
    side = int(model.config.prompt_encoder_config.image_size) // int(
        model.config.prompt_encoder_config.patch_size
    )

    def features(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(parameter.device, parameter.dtype)

    embedding = Sam2ImageEmbedding(
        image_embeddings=features((1, channels, side, side)),
        feat_s0=features((1, channels // 8, 4 * side, 4 * side)),
        feat_s1=features((1, channels // 4, 2 * side, 2 * side)),
    )
    points = torch.tensor(CHECK_POINTS) * (int(model.config.prompt_encoder_config.image_size) / 1024)
    problem = None
    try:
        expected = decode_points_stock(model, embedding, points, batch_size=len(points), iou_threshold=-1.0)
        got = decode_points_fast(model, embedding, points, batch_size=len(points), iou_threshold=-1.0)
        scale = float(expected.low_res_logits.abs().max()) or 1.0
        logits = float((got.low_res_logits - expected.low_res_logits).abs().max()) / scale
        iou = float((got.predicted_iou - expected.predicted_iou).abs().max())
        if got.low_res_logits.shape != expected.low_res_logits.shape or not (
            logits <= tolerance and iou <= tolerance
        ):
            problem = f"mask logits differ by {logits:.1e} (relative), predicted IoU by {iou:.1e}"
    except Exception as error:  # noqa: BLE001 - any failure means: do not use it
        problem = f"{type(error).__name__}: {error}"
    if problem is None:
        return "fast"
    warnings.warn(
        f"refseg's fast SAM2 decoder does not match this transformers version ({problem}); "
        "using transformers' own decoder (same results, slower).",
        RuntimeWarning,
        stacklevel=3,
    )
    return "stock"
