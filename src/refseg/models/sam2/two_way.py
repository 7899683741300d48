"""The fast decoder's two-way transformer (items 2, 3 and 7 of
:mod:`refseg.models.sam2.fast_decoder`): each prompt's few tokens attend to the image with the
image-side projections moved onto the tokens, and, in float32, the per-prompt image tokens are
never built (:mod:`refseg.models.sam2.low_rank_tokens`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Sam2Model
from transformers.models.sam2.modeling_sam2 import Sam2Attention

from .image_context import ImageContext, merge_heads, per_head, split_heads
from .low_rank_tokens import ImageSide, LowRankTokens


@dataclass
class ImageTrace:
    """What :class:`Conv1Chain` needs of each prompt's pass through the blocks (n prompts).

    Attributes:
        probs: per block, (n, heads * T, HW) image -> tokens attention weights ``P_l``.
        values: per block, (n, heads * T, C) the values with the output projection folded in, ``V_l``.
        means, rstds: per block, (n, HW, 1) the LayerNorm statistics ``m_l`` and ``r_l``.
    """

    probs: list[torch.Tensor]
    values: list[torch.Tensor]
    means: list[torch.Tensor]
    rstds: list[torch.Tensor]


def _tokens_to_shared_image(
    attention: Sam2Attention, tokens_with_pe: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Tokens (n, T, C) attend to image keys/values (1, heads, HW, d) shared by all prompts:
    every prompt's tokens are one query set. Returns (n, T, C)."""
    n, tokens, _ = tokens_with_pe.shape
    heads = attention.num_attention_heads
    q = split_heads(attention.q_proj(tokens_with_pe), heads)  # (n, heads, T, d)
    q = q.transpose(0, 1).reshape(1, heads, n * tokens, -1)
    out = F.scaled_dot_product_attention(q, k, v, scale=attention.scaling)
    out = out.view(heads, n, tokens, -1).transpose(0, 1)  # (n, heads, T, d)
    return attention.o_proj(merge_heads(out))


def _tokens_to_image(
    attention: Sam2Attention, tokens_with_pe: torch.Tensor, keys: torch.Tensor, keys_with_pe: torch.Tensor
) -> torch.Tensor:
    """Tokens (n, T, C) attend to each prompt's image tokens (n, HW, C), projecting the T
    queries instead of the HW keys and values. Returns (n, T, C)."""
    n, tokens, channels = tokens_with_pe.shape
    heads = attention.num_attention_heads
    q = split_heads(attention.q_proj(tokens_with_pe), heads) * attention.scaling  # (n, heads, T, d)
    # scores_h = q_h (Wk_h x + bk_h) over image tokens x; q_h . bk_h is constant along the softmax.
    q_through_k = torch.matmul(q, per_head(attention.k_proj.weight, heads)).view(n, heads * tokens, channels)
    probs = torch.bmm(q_through_k, keys_with_pe.transpose(1, 2)).softmax(dim=-1)  # (n, heads*T, HW)
    # out_h = P_h (Wv_h x + bv_h) = (P_h x) Wv_h^T + bv_h since rows of P_h sum to 1.
    pooled = torch.bmm(probs, keys).view(n, heads, tokens, channels)
    v_weight = per_head(attention.v_proj.weight, heads).transpose(1, 2)  # (heads, C, d)
    out = torch.matmul(pooled, v_weight) + attention.v_proj.bias.view(heads, 1, -1)
    return attention.o_proj(merge_heads(out))


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
    k = split_heads(attention.k_proj(tokens_with_pe), heads) * attention.scaling  # (n, heads, T, d)
    if image_q is not None:
        # One product per prompt, all heads at once, straight into prompt-major order.
        k = k.to(image_q.dtype)
        scores = torch.empty(
            (n, heads, tokens, image_q.shape[-1]), dtype=image_q.dtype, device=image_q.device
        )
        for prompt in range(n):
            torch.bmm(k[prompt], image_q, out=scores[prompt])
        return scores.softmax(dim=2).view(n, heads * tokens, -1)
    k_through_q = torch.matmul(k, per_head(attention.q_proj.weight, heads)).view(n, heads * tokens, channels)
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
    v = split_heads(attention.v_proj(tokens), heads)  # (n, heads, T, d)
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


def run_transformer(
    model: Sam2Model, context: ImageContext, sparse: torch.Tensor, outputs: list[int]
) -> tuple[torch.Tensor, torch.Tensor, ImageTrace | None]:
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
    trace = ImageTrace([], [], [], []) if context.chain is not None else None
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
    q = split_heads(attention.q_proj(tokens_with_pe), heads) * attention.scaling  # (n, heads, T, d)
    # Scores q . Wk (r g.B + b + pe) + q . bk: the b and bk terms are constant along the softmax.
    scores = _low_rank_scores(q, attention.k_proj.weight, image, centred, norm, rstd, (key, "k"))
    probs = scores.softmax(dim=-1)  # (n, heads * T, HW)
    # Values Wv (r g.B + b) + bv; each row of probs sums to 1.
    v_weight = attention.v_proj.weight
    v_gain = image.memo(("gain", key, "v"), lambda: v_weight * gain)
    pooled = centred.pool(probs.mul_(rstd[:, None, :]), v_gain, heads, (key, "v"))  # (n, heads, T, d)
    pooled = pooled + (v_weight @ bias + attention.v_proj.bias).view(heads, 1, -1)
    return attention.o_proj(merge_heads(pooled))


def run_transformer_low_rank(
    model: Sam2Model, context: ImageContext, sparse: torch.Tensor, outputs: list[int]
) -> tuple[torch.Tensor, None, ImageTrace]:
    """:func:`run_transformer` without building any prompt's image tokens (float32, with
    ``context.low_rank``): attention, LayerNorm statistics and the trace for the conv1 chain
    all come from :class:`LowRankTokens`. Returns (queries, None, trace)."""
    decoder = model.mask_decoder
    image = context.low_rank
    assert image is not None
    n = sparse.shape[0]
    point_pe = _prompt_tokens(decoder, sparse)
    queries = point_pe
    trace = ImageTrace([], [], [], [])
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
            k = split_heads(back.k_proj(queries + point_pe), heads) * back.scaling  # (n, heads, T, d)
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
