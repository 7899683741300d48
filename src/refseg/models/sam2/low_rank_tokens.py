"""The mask decoder's per-prompt image tokens, used without ever being built.

In SAM2's two-way transformer every prompt owns a copy of the 4096 image tokens (256 channels
each, 4 MiB) from the first block on: block l adds a low-rank term to them and applies a
LayerNorm. Whatever the decoder does with these tokens afterwards is either a projection
followed by a dot product with a few token vectors (attention scores), an attention-weighted
sum (pooled values), a LayerNorm's statistics, or the first upscaling convolution (done
through the same chain by :class:`refseg.models.sam2.image_context.Conv1Chain`). Each of these can
be computed from a compact description of the tokens instead of the tokens themselves.

With ``X`` the image tokens shared by all prompts and the centring ``c(u) = u - mean(u) 1``,
the centred LayerNorm input of block l (``U_l - m_l``) is

    B_0 = c(X) + V_0^T P_0
    B_l = r_{l-1} * L_{l-1} B_{l-1} + c(b_{l-1}) + V_l^T P_l,     L = c(diag(g) .)

where ``P_l`` (heads * T rows per pixel) are the image -> tokens attention weights, ``V_l`` the
centred values with the output projection folded in, ``r, g, b`` the previous LayerNorm's
per-pixel reciprocal standard deviation, gain and bias. The tokens themselves are
``keys_l = r_l * (g_l . B_l) + b_l``. So, per prompt:

- a projection ``W_h`` of the tokens dotted with token vectors ``q_j`` costs one product of
  the small ``q_j^T W_h V_l^T`` (rows x rows) with ``P_l`` per block, plus per-head products
  of ``q_j`` with the per-image ``W_h c(X)`` (head width 16, not 256 channels);
- attention pooling costs ``A P_l^T`` (rows x rows) per block plus per-head pooling of
  ``W_h c(X)``;
- a LayerNorm variance is a quadratic form: per-image ``|X|^2`` terms, per-head cross terms
  and ``P^T (V V^T) P`` Gram terms.

For SAM2's decoder this is ~190 M multiply-adds per prompt instead of ~430 M, and no pass over
a 4 MiB tensor. Only used in float32 (under autocast the expansions would lose what cancels).
Products of ``c(X)`` with fixed matrices are computed once per image and cached.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch


class ImageSide:
    """Per-image tensors of the low-rank path, and a cache of their products with fixed
    matrices (built on first use, shared by every chunk of prompts of the image).

    Args:
        keys: (N, C) the image tokens ``X`` (embedding + no-mask embedding).
        key_pe: (N, C) their positional encoding.
    """

    def __init__(self, keys: torch.Tensor, key_pe: torch.Tensor) -> None:
        self.mean = keys.mean(dim=-1)  # (N,)
        self.centred = keys - self.mean[:, None]  # (N, C)
        self.key_pe = key_pe
        self._cache: dict[Hashable, torch.Tensor] = {}

    def memo(self, key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()``, computed once per key. Keys are nested tuples naming what is built and
        the path of calls that asked for it (one key for two different tensors would be a
        silent error, so every call site tags its keys)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _heads_matrix(self, source: str, weight: torch.Tensor, heads: int, key: Hashable) -> torch.Tensor:
        """``source @ weight^T`` (N, heads * d) as (heads, d, N), cached."""

        def build() -> torch.Tensor:
            tokens = self.centred if source == "x" else self.key_pe
            product = tokens @ weight.t()
            return product.view(product.shape[0], heads, -1).permute(1, 2, 0).contiguous()

        return self.memo(("heads", source, key), build)

    def heads_dot(
        self,
        q: torch.Tensor,
        weight: torch.Tensor,
        key: Hashable,
        source: str = "x",
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``q_j . W_h s[p]`` for every row j = (h, t) of ``q`` (n, heads, T, d) and pixel p, with
        ``s`` = c(X) (``source="x"``) or the positional encoding (``"pe"``), ``W`` (heads * d, C).

        Returns (n, heads * T, N); with ``out`` (that shape, contiguous) the products are added
        to it in place. One product per prompt, all heads at once, so the result is in the
        prompt-major order of every other per-pixel tensor here (one product over all heads
        would be head-major)."""
        n, heads, tokens, d = q.shape
        matrix = self._heads_matrix(source, weight, heads, key)  # (heads, d, N)
        if out is None:
            out = torch.empty((n, heads * tokens, matrix.shape[-1]), dtype=matrix.dtype, device=matrix.device)
            for prompt in range(n):
                torch.bmm(q[prompt], matrix, out=out[prompt].view(heads, tokens, -1))
        else:
            for prompt in range(n):
                out[prompt].view(heads, tokens, -1).baddbmm_(q[prompt], matrix)
        return out

    def heads_pool(self, weights: torch.Tensor, matrix_weight: torch.Tensor, key: Hashable) -> torch.Tensor:
        """``sum_p A[j, p] W_h c(X)[p]`` for attention weights ``weights`` (n, heads, T, N):
        (n, heads, T, d)."""
        n, heads, tokens, pixels = weights.shape

        def build() -> torch.Tensor:
            product = self.centred @ matrix_weight.t()  # (N, heads * d)
            return product.view(pixels, heads, -1).transpose(0, 1).contiguous()  # (heads, N, d)

        matrix = self.memo(("pool", key), build)
        out = torch.empty((n, heads, tokens, matrix.shape[-1]), dtype=matrix.dtype, device=matrix.device)
        for prompt in range(n):
            torch.bmm(weights[prompt], matrix, out=out[prompt])
        return out

    def vector(self, w: torch.Tensor, key: Hashable) -> torch.Tensor:
        """``c(X)[p] . w`` (N,), cached."""
        return self.memo(("vec", key), lambda: self.centred @ w)

    def quad(self, k: torch.Tensor | None, key: Hashable) -> torch.Tensor:
        """``c(X)[p]^T K c(X)[p]`` (N,) for a symmetric K (None: identity), cached."""

        def build() -> torch.Tensor:
            x = self.centred
            return (x * x).sum(-1) if k is None else (x * (x @ k)).sum(-1)

        return self.memo(("quad", key), build)


def centring_map(gain: torch.Tensor) -> torch.Tensor:
    """``L`` with ``L u = c(gain * u)``, as a (C, C) matrix."""
    channels = gain.shape[0]
    return torch.diag(gain) - gain[None, :] / channels


class LowRankTokens:
    """``B_l`` (see the module docstring) of one chunk of n prompts.

    Args:
        image: the image's :class:`ImageSide`.
        probs: (n, heads * T, N) block l's image -> tokens attention weights ``P_l``.
        v: (n, heads, T, d) block l's token values before the output projection.
        values: (n, heads * T, C) ``V_l`` uncentred: ``o_weight_h v + o_bias / heads``.
        o_weight, o_bias: the output projection's weight (C, heads * d) and bias (C,).
        previous: ``B_{l-1}`` (None for block 0).
        rstd: (n, N) ``r_{l-1}``; gain, bias: (C,) ``g_{l-1}``, ``b_{l-1}`` (block l >= 1).
        key: a name for this block, for the per-image cache.
    """

    def __init__(
        self,
        image: ImageSide,
        probs: torch.Tensor,
        v: torch.Tensor,
        values: torch.Tensor,
        o_weight: torch.Tensor,
        o_bias: torch.Tensor,
        key: Hashable,
        previous: LowRankTokens | None = None,
        rstd: torch.Tensor | None = None,
        gain: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        self.image = image
        self.probs = probs
        self.v = v
        self.value_mean = values.mean(dim=-1)  # (n, J)
        self.centred_values = values - self.value_mean[..., None]  # (n, J, C)
        self.o_weight = o_weight
        self.o_bias = o_bias
        self.key = key
        self.previous = previous
        self.rstd = rstd
        if previous is not None:
            assert rstd is not None and gain is not None and bias is not None
            self.map = image.memo(("map", key), lambda: centring_map(gain))  # L_{l-1}
            self.bias = bias - bias.mean()  # c(b_{l-1})

    def weighted_rows(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``sum_i P_i[p] coefficients[i]`` for (n, J) coefficients: (n, N)."""
        return torch.bmm(coefficients.unsqueeze(1), self.probs).squeeze(1)

    def linear(self, q: torch.Tensor, weight: torch.Tensor, key: Hashable) -> torch.Tensor:
        """``q_j . W_h B[p]`` for q (n, heads, T', d) and a fixed W (heads * d, C):
        (n, heads * T', N), a fresh tensor."""
        n, heads, tokens, d = q.shape
        q_through = torch.matmul(q, weight.view(heads, d, -1)).view(n, heads * tokens, -1)  # (n, J', C)
        rows = torch.bmm(q_through, self.centred_values.transpose(1, 2))  # (n, J', J)
        if self.previous is None:
            return self.image.heads_dot(q, weight, key).baddbmm_(rows, self.probs)
        inner_key = (key, "linear", self.key)
        out = self.previous.linear(
            q, self.image.memo(("lin-w", inner_key), lambda: weight @ self.map), inner_key
        )
        out.mul_(self.rstd[:, None, :]).add_((q_through @ self.bias)[..., None])
        return out.baddbmm_(rows, self.probs)

    def vector(self, w: torch.Tensor, key: Hashable) -> torch.Tensor:
        """``w . B[p]`` for a fixed w (C,): (n, N)."""
        rows = self.weighted_rows(self.centred_values @ w)
        if self.previous is None:
            return rows + self.image.vector(w, key)
        inner_key = (key, "vector", self.key)
        inner = self.previous.vector(
            self.image.memo(("vec-w", inner_key), lambda: self.map.t() @ w), inner_key
        )
        return inner.mul_(self.rstd).add_(rows).add_(w @ self.bias)

    def pool(self, weights: torch.Tensor, weight: torch.Tensor, heads: int, key: Hashable) -> torch.Tensor:
        """``sum_p A[j, p] W_h B[p]`` for A (n, heads * T', N) and a fixed W (heads * d, C):
        (n, heads, T', d)."""
        n, rows_count, pixels = weights.shape
        d = weight.shape[0] // heads
        tokens = rows_count // heads
        weighted = torch.bmm(weights, self.probs.transpose(1, 2))  # (n, J', J)
        projected = self.centred_values @ weight.t()  # (n, J, heads * d)
        full = torch.bmm(weighted, projected).view(n, heads, tokens, heads, d)
        rows = torch.diagonal(full, dim1=1, dim2=3).permute(0, 3, 1, 2)  # (n, heads, T', d)
        if self.previous is None:
            x = self.image.heads_pool(weights.view(n, heads, tokens, pixels), weight, key)
            return rows + x
        inner_key = (key, "pool", self.key)
        inner = self.previous.pool(
            weights * self.rstd[:, None, :],
            self.image.memo(("pool-w", inner_key), lambda: weight @ self.map),
            heads,
            inner_key,
        )
        bias_term = (weight @ self.bias).view(heads, 1, d) * weights.sum(-1).view(n, heads, tokens, 1)
        return inner + bias_term + rows

    def quad(self, k: torch.Tensor | None, key: Hashable) -> torch.Tensor:
        """``B[p]^T K B[p]`` for a fixed symmetric K (C, C) (None: identity): (n, N).

        Every term of the form ``sum_i P_i[p] e_i[p]`` is gathered into one (n, J, N) tensor
        ``e``, with the Gram term as ``e += G P / 2``, so that it costs one product with the
        attention weights and one weighted sum instead of one of each per term."""
        values = self.centred_values
        k_values = values if k is None else values @ k  # (n, J, C)
        gram = torch.bmm(k_values, values.transpose(1, 2))  # (n, J, J)
        o_weight, o_bias = self.o_weight, self.o_bias
        n = self.probs.shape[0]
        if self.previous is None:
            # Cross terms c(X)^T K V_i, V_i = W_h v_i + bo / heads - mean_i 1; sum_i P_i / heads = 1.
            o_k = self.image.memo(
                ("q0-o", key), lambda: (o_weight if k is None else k @ o_weight).t().contiguous()
            )
            # e_i = c(X)^T K W_h v_i - mean_i c(X)^T K 1 + (G P)_i / 2
            terms = self.image.heads_dot(self.v, o_k, ("q0-o", key))
            if k is not None:  # c(X) . 1 = 0
                x_k_ones = self.image.vector(k @ torch.ones_like(o_bias), ("q0-1", key))
                terms.baddbmm_(self.value_mean[..., None], x_k_ones.expand(n, 1, -1), alpha=-1.0)
            terms.baddbmm_(gram, self.probs, alpha=0.5)
            total = (terms.mul_(self.probs)).sum(1).mul_(2.0)
            total += 2.0 * self.image.vector(o_bias if k is None else k @ o_bias, ("q0-b", key))
            return total.add_(self.image.quad(k, key))
        inner_key = (key, "quad", self.key)
        lam = self.map
        # K L and L^T K: (C, C) products, once per image rather than per chunk.
        k_lam = lam if k is None else self.image.memo(("q-kl", inner_key), lambda: k @ lam)
        lam_t_k = lam.t() if k is None else self.image.memo(("q-lk", inner_key), lambda: lam.t() @ k)
        k_bias = self.bias if k is None else k @ self.bias
        rstd = self.rstd
        # r^2 B'^T L^T K L B'
        total = self.previous.quad(self.image.memo(("q-k", inner_key), lambda: lam.t() @ k_lam), inner_key)
        total.mul_(rstd.square())
        # 2 r (K (c(b) + bo))^T L B'   (bo: sum_i P_i / heads = 1)
        total.addcmul_(
            self.previous.vector(
                self.image.memo(("q-bo", inner_key), lambda: lam.t() @ k_bias + lam_t_k @ o_bias),
                ("q-bo", inner_key),
            ),
            rstd,
            value=2.0,
        )
        # e_i = r V_i^T K L B' (V_i without its bias) - r mean_i 1^T K L B' + V_i^T K c(b) + (G P)_i / 2
        o_k_lam = self.image.memo(("q-o", inner_key), lambda: o_weight.t() @ k_lam)  # (heads * d, C)
        terms = self.previous.linear(self.v, o_k_lam, ("q-o", inner_key))  # (n, J, N)
        terms.mul_(rstd[:, None, :])
        ones = self.previous.vector(
            self.image.memo(("q-o1", inner_key), lambda: lam_t_k @ torch.ones_like(o_bias)),
            ("q-o1", inner_key),
        )
        coefficients = torch.stack([-self.value_mean, values @ k_bias], dim=2)  # (n, J, 2)
        pixel_rows = torch.stack([ones * rstd, torch.ones_like(rstd)], dim=1)  # (n, 2, N)
        terms.baddbmm_(coefficients, pixel_rows)
        terms.baddbmm_(gram, self.probs, alpha=0.5)
        total.add_(terms.mul_(self.probs).sum(1), alpha=2.0)
        return total.add_(self.bias @ k_bias)

    def channel_mean_of_tokens(
        self, gain: torch.Tensor, bias: torch.Tensor, rstd: torch.Tensor
    ) -> torch.Tensor:
        """Mean over channels of ``r * (g . B) + b`` (the LayerNorm output built on this B): (n, N)."""
        channels = gain.shape[0]
        return self.vector(gain / channels, ("mean", self.key)).mul_(rstd).add_(bias.mean())
