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
4. **Small chunks**: prompts go through in chunks of at most ``Sam2Options.prompt_chunk``, so
   the per-chunk temporaries stay small instead of multi-GiB.
5. **Few page faults**: every chunk allocates and frees tens-of-MiB temporaries, which glibc
   would hand straight back to the kernel and fault in again. The decoder itself sets nothing
   process-wide: a program that runs it on CPU calls :func:`refseg.runtime.tune_cpu_memory`
   (the CLI and the benchmarks do) so that freed blocks are reused.
6. **conv1 through the LayerNorms** (float32): see :class:`~.image_context.Conv1Chain`.
7. **Image tokens never built** (float32): from the first block on, each prompt's image tokens
   are the shared ones plus low-rank attention updates and LayerNorms; the transformer works
   on that description (:mod:`refseg.models.sam2.low_rank_tokens`), and the trace it leaves is
   what the conv1 chain needs. Under autocast the tokens are built (items 2 and 4).
8. **Upscaling in pixel tiles**: every upscaling step is per pixel, so
   ``Sam2Options.pixel_tile`` low-resolution pixels go through all of them at a time.

The per-image part is :mod:`.image_context`, the two-way transformer :mod:`.two_way`; this
module upscales, picks the masks and checks itself against transformers (:func:`fast_or_stock`).
Outputs equal the stock path to float32 rounding (the tests compare both on the tiny model);
docs/speed.md has what each item measured.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from transformers import Sam2Model

from ..base import Proposals
from . import image_context, two_way
from .embedding import Sam2ImageEmbedding, decode_points_stock, empty_proposals
from .image_context import Conv1Chain, ImageContext
from .options import DEFAULT_OPTIONS, Sam2Options
from .two_way import ImageTrace


class _Conv1ThroughChain:
    """conv1 (+ its bias and the s1 features) of the final image tokens of a chunk's prompts
    ``rows``, from the trace instead of the tokens themselves, one pixel range at a time.

    The per-prompt right-hand sides (token values through the chain's maps) are computed once
    here; :meth:`pixels` then costs the rank-(L * heads * T + 2(L - 1)) products for its pixels.
    """

    def __init__(self, chain: Conv1Chain, trace: ImageTrace, rows: slice | torch.Tensor) -> None:
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
        # scales[l] = r_l ... r_{L-1} = R_0 * c_l (see Conv1Chain)
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


def _upscale_masks(
    model: Sam2Model,
    context: ImageContext,
    keys: torch.Tensor | None,
    hyper: torch.Tensor,
    trace: ImageTrace | None,
    rows: slice | torch.Tensor,
    pixel_tile: int,
) -> torch.Tensor:
    """Upscale k prompts' final image tokens and take each one's chosen mask.

    Args:
        keys: (n, HW, C) final image tokens of the chunk's prompts (None with a trace).
        hyper: (k, C/8) each upscaled prompt's hypernetwork output for its chosen mask.
        trace: the chunk's trace, when ``context.chain`` computes conv1 (then ``keys`` is unused).
        rows: the k prompts of the chunk to upscale.
        pixel_tile: low-resolution pixels upscaled at a time.

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
    for start in range(0, pixels, pixel_tile):
        stop = min(start + pixel_tile, pixels)
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
        # product with one column ran several times slower (docs/speed.md).
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
    options: Sam2Options = DEFAULT_OPTIONS,
) -> Proposals:
    """Same contract and outputs as :func:`refseg.models.sam2.embedding.decode_points_stock`.

    Args:
        model: the SAM2 model (its device is where the work happens).
        embedding: the image's features from :meth:`Sam2Proposer.embed`.
        points: (P, 2) float (x, y) in the model's input pixels.
        batch_size: at most this many prompts per transformer chunk (also capped at
            ``options.prompt_chunk``); compute only.
        iou_threshold: keep a prompt when its best predicted IoU is > this.
        options: how the work is split (results do not depend on it).

    Returns:
        Proposals of the surviving prompts in prompt order, float32 on the CPU.
    """
    decoder = model.mask_decoder
    device = embedding.image_embeddings.device
    context = image_context.prepare_image(model, embedding, options)
    first_mask = 1  # the multimask outputs are mask tokens 1..3 (token 0 is the single mask)
    # Output tokens used: the IoU token (1) and the multimask tokens (2 + 1 .. 2 + 3).
    outputs = [1, *range(2 + first_mask, 2 + decoder.num_mask_tokens)]
    hypernetworks = decoder.output_hypernetworks_mlps[first_mask:]
    chunk_size = max(1, min(batch_size, options.prompt_chunk))
    # Survivors' logits are written straight into one buffer: a list + cat would hold them
    # twice at the end, the decode's peak.
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
        run = two_way.run_transformer_low_rank if context.low_rank is not None else two_way.run_transformer
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
        step = options.upscale_chunk
        for part in range(0, kept.numel(), step):
            # When every prompt survives, a slice (a view) instead of a gathered copy.
            rows = slice(part, part + step) if all_kept else kept[part : part + step]
            masks = _upscale_masks(
                model, context, keys, hyper[part : part + step], trace, rows, options.pixel_tile
            )
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
def fast_or_stock(model: Sam2Model, options: Sam2Options = DEFAULT_OPTIONS, tolerance: float = 1e-4) -> str:
    """Use the fast decoder if it reproduces ``Sam2Model.forward`` on a random embedding.

    The fast decoder is written against transformers' SAM2 mask decoder as of transformers 5;
    on another version a difference would show here (three prompts against random O(1)
    features, with the ``options`` the decoder will run with; cheap next to loading).

    Returns:
        "fast", or "stock" with a warning naming the difference.
    """
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
        got = decode_points_fast(
            model, embedding, points, batch_size=len(points), iou_threshold=-1.0, options=options
        )
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
