"""A leaner forward for SAM2's Hiera image encoder: same outputs, less memory, a little faster.

``transformers``' Hiera blocks hold every intermediate of a whole 256 x 256-token stage at
once (the query/key/value projection of 65,536 tokens alone is 113-226 MB in float32), and
each attention layer also computes a softmax over a (tokens, heads, heads) product that it
never uses. :func:`make_lean` swaps the forward methods of one model's blocks for versions that

- run each windowed block a band of window rows at a time (attention never leaves a window,
  everything else is per token), writing into one output buffer, so only the block's input
  and output exist at full size;
- run the MLP a block of rows at a time, with the GELU in place;
- skip the unused attention weights.

:func:`image_embeddings` is ``Sam2Model.get_image_embeddings`` without the FPN position
encodings, which only SAM2's video memory reads: building them took about 0.27 GiB of
temporaries at 1024 x 1024, and transformers keeps the last one (67 MB) in a cache.

The arithmetic is the same, only split into pieces, so the features equal the stock forward's
to float32 rounding (1e-7 on Hiera-L; the tests compare them, in bfloat16 too). Only the
instance passed in is changed; the stock classes are left alone. The code follows transformers'
SAM2 modules as of transformers 5: :func:`lean_or_stock` (what ``Sam2Proposer`` calls) checks
it against the stock forward on a small image and keeps the stock one when they differ.
"""

from __future__ import annotations

import types
import warnings

import torch
import torch.nn.functional as F
from transformers.activations import GELUActivation
from transformers.models.sam2 import modeling_sam2

# Tokens per piece of work: a windowed block takes bands of whole window rows up to about this
# many tokens, the MLP this many rows (about 19 MB of hidden activations at Hiera-L's first stage).
TOKENS_PER_PIECE = 8192


def _attention_forward(self: modeling_sam2.Sam2MultiScaleAttention, hidden_states: torch.Tensor, **kwargs):
    """``Sam2MultiScaleAttention.forward`` without its unused attention-weight softmax."""
    batch_size, height, width, _ = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(batch_size, height * width, 3, self.num_attention_heads, -1)
    query, key, value = torch.unbind(qkv, 2)
    if self.query_stride:
        query = modeling_sam2.do_pool(query.reshape(batch_size, height, width, -1), self.query_stride)
        height, width = query.shape[1:3]
        query = query.reshape(batch_size, height * width, self.num_attention_heads, -1)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=self.scale
    )
    return self.proj(out.transpose(1, 2).reshape(batch_size, height, width, -1))


def _mlp_forward(self: modeling_sam2.Sam2FeedForward, hidden_states: torch.Tensor) -> torch.Tensor:
    """Two-layer GELU MLP, ``TOKENS_PER_PIECE`` rows at a time, GELU in place."""
    shape = hidden_states.shape
    flat = hidden_states.reshape(-1, shape[-1])
    rows = flat.shape[0]
    # Under autocast the products come out in the low precision: the buffer takes their dtype.
    direct = not torch.is_autocast_enabled(flat.device.type)
    out = None
    for start in range(0, rows, TOKENS_PER_PIECE):
        stop = min(rows, start + TOKENS_PER_PIECE)
        hidden = F.linear(flat[start:stop], self.proj_in.weight, self.proj_in.bias)
        torch.ops.aten.gelu_(hidden)
        if direct and hidden.dtype == self.proj_out.weight.dtype:
            if out is None:
                out = flat.new_empty((rows, self.proj_out.out_features), dtype=hidden.dtype)
            torch.addmm(self.proj_out.bias, hidden, self.proj_out.weight.t(), out=out[start:stop])
        else:
            piece = F.linear(hidden, self.proj_out.weight, self.proj_out.bias)
            if out is None:
                out = piece.new_empty((rows, piece.shape[-1]))
            out[start:stop] = piece
    return out.view(*shape[:-1], -1)


def _block_forward(self: modeling_sam2.Sam2MultiScaleBlock, hidden_states: torch.Tensor, **kwargs):
    """``Sam2MultiScaleBlock.forward`` for windowed blocks, a band of window rows at a time.

    Everything in a windowed block is local to a row of windows: LayerNorms and the MLP are
    per token, attention stays inside each window, query pooling (2x2, stride 2) inside each
    window too. So the block runs on horizontal bands of whole window rows (about
    ``TOKENS_PER_PIECE`` tokens each) and writes each band's rows of the output; only the
    block's input and output exist at full size. Padding is as in ``window_partition``: the
    normalised tokens of the last band are padded with zeros to whole windows, and the
    padded rows and columns are dropped after attention.
    """
    stride = self.query_stride[0] if self.query_stride else 1
    if self.window_size == 0 or self.window_size % stride or (stride > 1) != (self.dim != self.dim_out):
        # Global attention, or a pooling that would not line up with the bands: stock forward.
        return self._stock_forward(hidden_states, **kwargs)
    batch, height, width, _ = hidden_states.shape
    window = self.window_size
    out_window = window // stride
    padded_width = width + (-width) % window
    windows_per_row = padded_width // window
    out_height, out_width = (height // stride, width // stride) if stride > 1 else (height, width)
    rows_per_band = window * max(1, TOKENS_PER_PIECE // (window * padded_width))
    output = None
    for top in range(0, height, rows_per_band):
        band = hidden_states[:, top : top + rows_per_band]
        rows = band.shape[1]
        normed = self.layer_norm1(band)
        residual = band
        if self.dim != self.dim_out:
            residual = modeling_sam2.do_pool(self.proj(normed), self.query_stride)
        window_rows = -(-rows // window)
        normed = F.pad(normed, (0, 0, 0, padded_width - width, 0, window_rows * window - rows))
        windows = (
            normed.view(batch, window_rows, window, windows_per_row, window, -1)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(-1, window, window, normed.shape[-1])
        )
        del normed
        attended = self.attn(windows, **kwargs)  # (windows, out_window, out_window, dim_out)
        del windows
        attended = (
            attended.view(batch, window_rows, windows_per_row, out_window, out_window, -1)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(batch, window_rows * out_window, windows_per_row * out_window, -1)
        )
        band_out = residual + attended[:, : residual.shape[1], :out_width]
        del attended, residual
        band_out = band_out + self.mlp(self.layer_norm2(band_out))
        if output is None:
            output = band_out.new_empty((batch, out_height, out_width, band_out.shape[-1]))
        start = top // stride
        output[:, start : start + band_out.shape[1]] = band_out
    return output


def _is_plain_gelu_mlp(mlp: torch.nn.Module) -> bool:
    return (
        isinstance(mlp, modeling_sam2.Sam2FeedForward)
        and mlp.num_layers == 2
        and not mlp.sigmoid_output
        and isinstance(mlp.activation, GELUActivation)
        and mlp.activation.act is F.gelu
    )


def make_lean(model: torch.nn.Module) -> int:
    """Give the Hiera blocks of ``model`` (a ``Sam2Model`` or its vision encoder) the lean forwards.

    Blocks of an unexpected shape (another activation, more MLP layers) keep their own. Safe to
    call twice.

    Returns:
        How many blocks were changed.
    """
    changed = 0
    for block in model.modules():
        if not isinstance(block, modeling_sam2.Sam2MultiScaleBlock) or hasattr(block, "_stock_forward"):
            continue
        if not isinstance(block.attn, modeling_sam2.Sam2MultiScaleAttention):
            continue
        block._stock_forward = block.forward
        block.attn.forward = types.MethodType(_attention_forward, block.attn)
        if _is_plain_gelu_mlp(block.mlp):
            block.mlp.forward = types.MethodType(_mlp_forward, block.mlp)
        block.forward = types.MethodType(_block_forward, block)
        changed += 1
    return changed


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


def image_embeddings(model: torch.nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """``Sam2Model.get_image_embeddings(pixel_values)`` (same values, same layout: high to low
    resolution, ``conv_s0``/``conv_s1`` applied, no-memory embedding added to the last) without
    computing the FPN position encodings."""
    vision = model.vision_encoder
    backbone = vision.backbone(pixel_values)
    features = _fpn_features(vision.neck, backbone.intermediate_hidden_states)
    del backbone
    maps = features[-vision.num_feature_levels :][::-1]
    maps[0] = model.mask_decoder.conv_s0(maps[0])
    maps[1] = model.mask_decoder.conv_s1(maps[1])
    maps[-1] = maps[-1] + model.no_memory_embedding.reshape(1, -1, 1, 1)
    return maps


def make_stock(model: torch.nn.Module) -> int:
    """Undo :func:`make_lean` on ``model``: its blocks get transformers' forwards back.

    Returns:
        How many blocks were changed back.
    """
    changed = 0
    for block in model.modules():
        if isinstance(block, modeling_sam2.Sam2MultiScaleBlock) and hasattr(block, "_stock_forward"):
            for module in (block, block.attn, block.mlp):
                module.__dict__.pop("forward", None)
            del block._stock_forward
            changed += 1
    return changed


# Input side of the self-check: small enough to be cheap (Hiera-L: ~0.2 s per forward on 2 CPU
# cores), large enough for windows, query pooling and padded windows in every stage.
CHECK_SIZE = 128


@torch.inference_mode()
def lean_or_stock(model: torch.nn.Module, tolerance: float = 1e-4) -> str:
    """Make ``model`` lean if the lean forward reproduces the stock one on a small random image.

    The lean forward is written against transformers' SAM2 modules as of transformers 5; on
    another version a difference would show here. The stock features (``vision_encoder``, FPN
    levels) are computed first, then the blocks are made lean and the same input is run again.

    Returns:
        "lean", or "stock" (with a warning naming the difference) when the check fails; the
        model is then left with its stock forwards.
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
        make_lean(model)
        backbone = vision.backbone(pixels)
        got = _fpn_features(vision.neck, backbone.intermediate_hidden_states)[-vision.num_feature_levels :][
            ::-1
        ]
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
    make_stock(model)
    warnings.warn(
        f"refseg's lean SAM2 image encoder does not match this transformers version ({problem}); "
        "using transformers' own forward (same results, more memory).",
        RuntimeWarning,
        stacklevel=3,
    )
    return "stock"
