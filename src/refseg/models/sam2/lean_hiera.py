"""A leaner forward for SAM2's Hiera image encoder: same outputs, less memory, a little faster.

``transformers``' Hiera blocks hold every intermediate of a whole 256 x 256-token stage at
once (the query/key/value projection of 65,536 tokens alone is 113-226 MB in float32), and
each attention layer also computes a softmax over a (tokens, heads, heads) product that it
never uses. :func:`backbone_features` runs the backbone's own modules (their weights, their
LayerNorms and projections) in another order:

- each windowed block runs a band of window rows at a time (attention never leaves a window,
  everything else is per token), writing into one output buffer, so only the block's input
  and output exist at full size;
- the MLP runs a block of rows at a time, with the GELU in place;
- the unused attention weights are skipped.

:func:`image_embeddings` is ``Sam2Model.get_image_embeddings`` on top of it, without the FPN
position encodings, which only SAM2's video memory reads (building them took about 0.27 GiB
of temporaries at 1024 x 1024, and transformers keeps the last one in a cache).

Nothing here changes the model: these are functions over its modules, so proposers with the
lean and the stock encoder can share one model. The arithmetic is the same, only split into
pieces, so the features equal the stock forward's to float32 rounding (the tests compare
them, in bfloat16 too). The code follows transformers' SAM2 modules as of transformers 5:
:func:`lean_or_stock` (what ``Sam2Proposer`` calls) checks it against the stock forward on a
small image and chooses the stock one when they differ.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from transformers.activations import GELUActivation
from transformers.models.sam2 import modeling_sam2

from .options import DEFAULT_OPTIONS, Sam2Options


def _attention(attention: modeling_sam2.Sam2MultiScaleAttention, hidden_states: torch.Tensor) -> torch.Tensor:
    """``Sam2MultiScaleAttention.forward`` without its unused attention-weight softmax."""
    batch_size, height, width, _ = hidden_states.shape
    qkv = attention.qkv(hidden_states).reshape(
        batch_size, height * width, 3, attention.num_attention_heads, -1
    )
    query, key, value = torch.unbind(qkv, 2)
    if attention.query_stride:
        query = modeling_sam2.do_pool(query.reshape(batch_size, height, width, -1), attention.query_stride)
        height, width = query.shape[1:3]
        query = query.reshape(batch_size, height * width, attention.num_attention_heads, -1)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=attention.scale
    )
    return attention.proj(out.transpose(1, 2).reshape(batch_size, height, width, -1))


def _is_plain_gelu_mlp(mlp: torch.nn.Module) -> bool:
    return (
        isinstance(mlp, modeling_sam2.Sam2FeedForward)
        and mlp.num_layers == 2
        and not mlp.sigmoid_output
        and isinstance(mlp.activation, GELUActivation)
        and mlp.activation.act is F.gelu
    )


def _mlp_forward(
    mlp: modeling_sam2.Sam2FeedForward, hidden_states: torch.Tensor, tokens_per_piece: int
) -> torch.Tensor:
    """Two-layer GELU MLP, ``tokens_per_piece`` rows at a time, GELU in place."""
    shape = hidden_states.shape
    flat = hidden_states.reshape(-1, shape[-1])
    rows = flat.shape[0]
    # Under autocast the products come out in the low precision: the buffer takes their dtype.
    direct = not torch.is_autocast_enabled(flat.device.type)
    out = None
    for start in range(0, rows, tokens_per_piece):
        stop = min(rows, start + tokens_per_piece)
        hidden = F.linear(flat[start:stop], mlp.proj_in.weight, mlp.proj_in.bias)
        torch.ops.aten.gelu_(hidden)
        if direct and hidden.dtype == mlp.proj_out.weight.dtype:
            if out is None:
                out = flat.new_empty((rows, mlp.proj_out.out_features), dtype=hidden.dtype)
            torch.addmm(mlp.proj_out.bias, hidden, mlp.proj_out.weight.t(), out=out[start:stop])
        else:
            piece = F.linear(hidden, mlp.proj_out.weight, mlp.proj_out.bias)
            if out is None:
                out = piece.new_empty((rows, piece.shape[-1]))
            out[start:stop] = piece
    return out.view(*shape[:-1], -1)


def _mlp(mlp: torch.nn.Module, hidden_states: torch.Tensor, tokens_per_piece: int) -> torch.Tensor:
    """The lean MLP where the module is the plain two-layer GELU one, else the module itself."""
    if _is_plain_gelu_mlp(mlp):
        return _mlp_forward(mlp, hidden_states, tokens_per_piece)
    return mlp(hidden_states)


def _whole_block(
    block: modeling_sam2.Sam2MultiScaleBlock, hidden_states: torch.Tensor, tokens_per_piece: int
) -> torch.Tensor:
    """``Sam2MultiScaleBlock.forward`` in its own order (global attention, or a pooling that
    would not line up with bands), with the lean attention and MLP."""
    residual = hidden_states
    hidden_states = block.layer_norm1(hidden_states)
    if block.dim != block.dim_out:
        residual = modeling_sam2.do_pool(block.proj(hidden_states), block.query_stride)
    window = block.window_size
    if window > 0:
        height, width = hidden_states.shape[1:3]
        hidden_states, padded = modeling_sam2.window_partition(hidden_states, window)
    hidden_states = _attention(block.attn, hidden_states)
    if window > 0:
        if block.query_stride:  # the windows shrank with the queries
            window //= block.query_stride[0]
            height, width = residual.shape[1:3]
            padded = (height + (-height) % window, width + (-width) % window)
        hidden_states = modeling_sam2.window_unpartition(hidden_states, window, padded, (height, width))
    hidden_states = residual + hidden_states
    return hidden_states + _mlp(block.mlp, block.layer_norm2(hidden_states), tokens_per_piece)


def _banded_block(
    block: modeling_sam2.Sam2MultiScaleBlock, hidden_states: torch.Tensor, tokens_per_piece: int
) -> torch.Tensor:
    """``Sam2MultiScaleBlock.forward`` for windowed blocks, a band of window rows at a time.

    Everything in a windowed block is local to a row of windows: LayerNorms and the MLP are
    per token, attention stays inside each window, query pooling (2x2, stride 2) inside each
    window too. So the block runs on horizontal bands of whole window rows (about
    ``tokens_per_piece`` tokens each) and writes each band's rows of the output; only the
    block's input and output exist at full size. Padding is as in ``window_partition``: the
    normalised tokens of the last band are padded with zeros to whole windows, and the
    padded rows and columns are dropped after attention.
    """
    stride = block.query_stride[0] if block.query_stride else 1
    batch, height, width, _ = hidden_states.shape
    window = block.window_size
    out_window = window // stride
    padded_width = width + (-width) % window
    windows_per_row = padded_width // window
    out_height, out_width = (height // stride, width // stride) if stride > 1 else (height, width)
    rows_per_band = window * max(1, tokens_per_piece // (window * padded_width))
    output = None
    for top in range(0, height, rows_per_band):
        band = hidden_states[:, top : top + rows_per_band]
        rows = band.shape[1]
        normed = block.layer_norm1(band)
        residual = band
        if block.dim != block.dim_out:
            residual = modeling_sam2.do_pool(block.proj(normed), block.query_stride)
        window_rows = -(-rows // window)
        normed = F.pad(normed, (0, 0, 0, padded_width - width, 0, window_rows * window - rows))
        windows = (
            normed.view(batch, window_rows, window, windows_per_row, window, -1)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(-1, window, window, normed.shape[-1])
        )
        del normed
        attended = _attention(block.attn, windows)  # (windows, out_window, out_window, dim_out)
        del windows
        attended = (
            attended.view(batch, window_rows, windows_per_row, out_window, out_window, -1)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(batch, window_rows * out_window, windows_per_row * out_window, -1)
        )
        band_out = residual + attended[:, : residual.shape[1], :out_width]
        del attended, residual
        band_out = band_out + _mlp(block.mlp, block.layer_norm2(band_out), tokens_per_piece)
        if output is None:
            output = band_out.new_empty((batch, out_height, out_width, band_out.shape[-1]))
        start = top // stride
        output[:, start : start + band_out.shape[1]] = band_out
    return output


def _block(block: torch.nn.Module, hidden_states: torch.Tensor, tokens_per_piece: int) -> torch.Tensor:
    """One Hiera block: banded where it is windowed and its pooling lines up with the bands,
    else whole; a block of an unexpected kind runs its own forward."""
    if not isinstance(block, modeling_sam2.Sam2MultiScaleBlock) or not isinstance(
        block.attn, modeling_sam2.Sam2MultiScaleAttention
    ):
        return block(hidden_states)
    stride = block.query_stride[0] if block.query_stride else 1
    if block.window_size == 0 or block.window_size % stride or (stride > 1) != (block.dim != block.dim_out):
        return _whole_block(block, hidden_states, tokens_per_piece)
    return _banded_block(block, hidden_states, tokens_per_piece)


def backbone_features(
    backbone: modeling_sam2.Sam2HieraDetModel, pixel_values: torch.Tensor, tokens_per_piece: int
) -> tuple[torch.Tensor, ...]:
    """``Sam2HieraDetModel.forward(pixel_values).intermediate_hidden_states`` (each stage's
    last output, (B, H, W, C), high to low resolution) with the lean blocks."""
    hidden_states = backbone.patch_embed(pixel_values)
    hidden_states = hidden_states + backbone._get_pos_embed(hidden_states.shape[1:3])
    stage_ends = set(backbone.stage_ends)
    intermediate = []
    for index, block in enumerate(backbone.blocks):
        hidden_states = _block(block, hidden_states, tokens_per_piece)
        if index in stage_ends:
            intermediate.append(hidden_states)
    return tuple(intermediate)


def _fpn_features(
    neck: modeling_sam2.Sam2VisionNeck, hidden_states: tuple[torch.Tensor, ...]
) -> list[torch.Tensor]:
    """The feature half of ``Sam2VisionNeck.forward`` (transformers 5), low to high resolution."""
    last = len(neck.convs) - 1
    features, previous = [], None
    for index in range(last, -1, -1):
        lateral = hidden_states[index].permute(0, 3, 1, 2)
        # transformers casts to convs[index]'s dtype while applying convs[last - index]: kept as is.
        lateral = neck.convs[last - index](lateral.to(neck.convs[index].weight.dtype))
        if index not in neck.fpn_top_down_levels or index == last:
            previous = lateral
        else:
            top_down = F.interpolate(previous.to(dtype=torch.float32), scale_factor=2.0, mode="nearest")
            previous = lateral + top_down.to(lateral.dtype)
        features.append(previous)
    return features


def _fpn_levels(
    vision: torch.nn.Module, pixel_values: torch.Tensor, tokens_per_piece: int
) -> list[torch.Tensor]:
    """``vision_encoder(pixel_values).fpn_hidden_states`` (high to low resolution), lean."""
    hidden_states = backbone_features(vision.backbone, pixel_values, tokens_per_piece)
    return _fpn_features(vision.neck, hidden_states)[-vision.num_feature_levels :][::-1]


def image_embeddings(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    tokens_per_piece: int = DEFAULT_OPTIONS.tokens_per_piece,
    *,
    no_memory_embedding: bool = True,
) -> list[torch.Tensor]:
    """``Sam2Model.get_image_embeddings(pixel_values)`` (same values, same layout: high to low
    resolution, ``conv_s0``/``conv_s1`` applied, no-memory embedding added to the last) with
    the lean backbone and without computing the FPN position encodings.

    ``no_memory_embedding=False``: the last level as the FPN makes it, without the no-memory
    embedding (the research code's grid embedding)."""
    maps = _fpn_levels(model.vision_encoder, pixel_values, tokens_per_piece)
    maps[0] = model.mask_decoder.conv_s0(maps[0])
    maps[1] = model.mask_decoder.conv_s1(maps[1])
    if no_memory_embedding:
        maps[-1] = maps[-1] + model.no_memory_embedding.reshape(1, -1, 1, 1)
    return maps


# Input side of the self-check: small enough to be cheap, large enough for windows, query
# pooling and padded windows in every stage.
CHECK_SIZE = 128


@torch.inference_mode()
def lean_or_stock(
    model: torch.nn.Module, options: Sam2Options = DEFAULT_OPTIONS, tolerance: float = 1e-4
) -> str:
    """Use the lean forward if it reproduces the stock one on a small random image.

    The lean forward is written against transformers' SAM2 modules as of transformers 5; on
    another version a difference would show here. Both run on the same input (the stock
    ``vision_encoder`` FPN levels, then the lean ones with ``options``); ``model`` is not
    changed.

    Returns:
        "lean", or "stock" (with a warning naming the difference) when the check fails.
    """
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((1, 3, CHECK_SIZE, CHECK_SIZE), generator=generator).to(
        parameter.device, parameter.dtype
    )
    vision = model.vision_encoder
    problem = None
    try:
        expected = vision(pixels).fpn_hidden_states
        got = _fpn_levels(vision, pixels, options.tokens_per_piece)
        for level, (a, b) in enumerate(zip(got, expected, strict=True)):
            scale = float(b.abs().max()) or 1.0
            difference = float((a - b).abs().max()) / scale
            if a.shape != b.shape or not difference <= tolerance:
                problem = f"FPN level {level} differs by {difference:.1e} (relative)"
                break
    except Exception as error:  # noqa: BLE001 - any failure means: do not use it
        problem = f"{type(error).__name__}: {error}"
    if problem is None:
        return "lean"
    warnings.warn(
        f"refseg's lean SAM2 image encoder does not match this transformers version ({problem}); "
        "using transformers' own forward (same results, more memory).",
        RuntimeWarning,
        stacklevel=3,
    )
    return "stock"
