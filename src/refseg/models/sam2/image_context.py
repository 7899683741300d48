"""What the fast decoder computes once per image, shared by every prompt (items 1 and 6 of
:mod:`refseg.models.sam2.fast_decoder`): the image tokens with the no-mask embedding and
positional encoding, the first two-way block's image-side projections, the high-resolution
features laid out for the upscaling, and the conv1 chain's per-image products."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Sam2Model

from .embedding import Sam2ImageEmbedding
from .low_rank_tokens import ImageSide
from .options import Sam2Options


@dataclass
class Conv1Chain:
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
class ImageContext:
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
            LayerNorms (see :class:`Conv1Chain`); None when the decoder runs under autocast.
        low_rank: the image side of the low-rank transformer (see low_rank_tokens.py); None
            when the tokens are built (no chain, or ``Sam2Options.low_rank_tokens`` off).
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
    chain: Conv1Chain | None = None
    low_rank: ImageSide | None = None


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, heads * d) -> (b, heads, n, d)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(b, heads, n, d) -> (b, n, heads * d)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def per_head(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A projection weight (heads * d, C) as (heads, d, C)."""
    return weight.view(heads, -1, weight.shape[-1])


def _conv_as_matrix(conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    """Weight (Cin, Cout, 2, 2) of a 2x2 stride-2 transposed conv as (Cin, 4 * Cout), order (i, j, Cout)."""
    weight = conv.weight
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def prepare_image(model: Sam2Model, embedding: Sam2ImageEmbedding, options: Sam2Options) -> ImageContext:
    """The per-image tensors of ``embedding`` for ``model``'s mask decoder (see :class:`ImageContext`)."""
    decoder = model.mask_decoder
    no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    image = embedding.image_embeddings + no_mask
    _, _, height, width = image.shape
    keys = image.flatten(2).transpose(1, 2).contiguous()
    key_pe = model.get_image_wide_positional_embeddings().flatten(2).transpose(1, 2).to(keys.dtype)

    first = decoder.transformer.layers[0]
    cross, back = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    keys_with_pe = keys + key_pe
    first_k = split_heads(cross.k_proj(keys_with_pe), cross.num_attention_heads).contiguous()
    first_v = split_heads(cross.v_proj(keys), cross.num_attention_heads).contiguous()
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
    if (
        options.conv1_chain
        and not torch.is_autocast_enabled(keys.device.type)
        and keys.dtype == torch.float32
    ):
        chain = _conv1_chain(decoder, keys, conv1_weight, feat_s1)
        if options.low_rank_tokens:
            low_rank = ImageSide(keys[0], key_pe[0])
    return ImageContext(
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
) -> Conv1Chain:
    """Per-image part of :class:`Conv1Chain` for image tokens ``keys`` (1, HW, C)."""
    norms = [layer.layer_norm4 for layer in decoder.transformer.layers]
    maps = [conv1_weight * norms[-1].weight[:, None]]
    for norm in reversed(norms[:-1]):
        maps.insert(0, maps[0] * norm.weight[:, None])
    row_sums = [m.sum(dim=0) for m in maps]
    # Block 0's mean is linear in its inputs: m_0 = mean(X) + P_0^T mean(V_0), so its term
    # joins X A_0 here and V_0 A_0 per prompt instead of being a column of its own.
    image_mean = keys.mean(dim=-1, keepdim=True)
    return Conv1Chain(
        image_product=keys @ maps[0] - image_mean * row_sums[0],
        maps=maps,
        row_sums=row_sums,
        bias_terms=[norm.bias @ m for norm, m in zip(norms[:-1], maps[1:], strict=True)],
        feat_s1=feat_s1 + norms[-1].bias @ conv1_weight,
    )
