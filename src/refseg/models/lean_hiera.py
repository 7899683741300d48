"""A leaner forward for SAM2's Hiera image encoder: same outputs, less memory, a little faster.

``transformers``' Hiera blocks hold every intermediate of a whole 256 x 256-token stage at
once (the query/key/value projection of 65,536 tokens alone is 113-226 MB in float32), and
each attention layer also computes a softmax over a (tokens, heads, heads) product that it
never uses. :func:`make_lean` swaps the forward methods of one model's blocks for versions that

- run windowed attention a few hundred windows at a time (windows are independent), writing
  into one output buffer, so the projection of only those windows exists at once;
- run the MLP a block of rows at a time, with the GELU in place;
- skip the unused attention weights.

Every product sees the same rows as before, so the encoder's outputs are unchanged (the tests
compare them with the stock forward). Only the instance passed in is changed; the stock
classes are left alone.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformers.activations import GELUActivation
from transformers.models.sam2 import modeling_sam2

# Tokens per piece of work: windowed attention takes whole windows up to about this many
# tokens, the MLP this many rows (about 19 MB of hidden activations at Hiera-L's first stage).
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
    """``Sam2MultiScaleBlock.forward`` with windowed attention a group of windows at a time."""
    if self.window_size == 0:
        return self._stock_forward(hidden_states, **kwargs)
    residual = hidden_states
    hidden_states = self.layer_norm1(hidden_states)
    if self.dim != self.dim_out:
        residual = modeling_sam2.do_pool(self.proj(hidden_states), self.query_stride)
    height, width = hidden_states.shape[1:3]
    windows, pad_hw = modeling_sam2.window_partition(hidden_states, self.window_size)
    del hidden_states
    window_size = self.window_size
    if self.query_stride:
        window_size = self.window_size // self.query_stride[0]
        height, width = residual.shape[1:3]
        pad_hw = (height + (-height) % window_size, width + (-width) % window_size)
    per_piece = max(1, TOKENS_PER_PIECE // (self.window_size * self.window_size))
    attended = windows.new_empty((windows.shape[0], window_size, window_size, self.dim_out))
    for start in range(0, windows.shape[0], per_piece):
        attended[start : start + per_piece] = self.attn(windows[start : start + per_piece], **kwargs)
    del windows
    hidden_states = modeling_sam2.window_unpartition(attended, window_size, pad_hw, (height, width))
    del attended
    hidden_states = hidden_states.add_(residual)
    del residual
    return hidden_states + self.mlp(self.layer_norm2(hidden_states))


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
