"""Multi-head self-attention with pluggable positional schemes.

The layer computes q, k, v, applies rotary if asked, mixes values with the
first layer's (value residual), asks its bias builder for a bias, and hands
everything to :func:`xforget.ops.attend`, which chooses the kernel from the
bias *kind* ("decay" -> O(n) fused fold, "matrix" -> dense). No scheme names
appear here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bias import get_bias_builder
from .cache import LayerCache, extend
from .ops import attend
from .rotary import RotaryEmbedding
from .value_residual import ValueResidualMix


class Attention(nn.Module):
    """Self-attention over (batch, n, dim) inputs.

    Args:
        dim: model width.
        heads: query heads.
        dim_head: channels per head (default dim // heads).
        causal: causal (decoder) or bidirectional (encoder).
        bias: name of a registered bias builder, or None.
        bias_options: model-wide options; the builder takes the keys it declares.
        rotary: a shared :class:`RotaryEmbedding` or None.
        value_residual_mix: None (off), or "fixed" / "learned" for layers after the first.
        backend: attention kernel override passed to :func:`xforget.ops.attend`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        dim_head: int | None = None,
        causal: bool = True,
        bias: str | None = None,
        bias_options: dict | None = None,
        rotary: RotaryEmbedding | None = None,
        value_residual_mix: str | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        dim_head = dim // heads if dim_head is None else dim_head
        self.heads, self.kv_heads, self.dim_head, self.causal = heads, heads, dim_head, causal
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.rotary = rotary
        self.bias = (
            get_bias_builder(bias).from_options(dim=dim, heads=heads, causal=causal, options=bias_options or {})
            if bias is not None
            else None
        )
        self.value_residual = ValueResidualMix(dim, self.kv_heads, value_residual_mix) if value_residual_mix else None
        self.backend = backend

    def _split_heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, -1, self.dim_head).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor,
        mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        first_values: Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> tuple[Tensor, Tensor, LayerCache]:
        """Attend from the new tokens ``x`` to the cached and new keys.

        Args:
            x: (batch, n, dim) normed input of the new tokens.
            positions: (n,) or (batch, n) int64 positions of the new tokens.
            mask: (batch, n) bool, True for real new tokens, or None.
            key_mask: (batch, n_cached + n) bool for all keys, or None.
            first_values: the first layer's values of the new tokens
                (batch, kv_heads, n, dim_head) for the value residual, or None.
            cache: this layer's cache of earlier tokens, or None.
        Returns:
            (out (batch, n, dim), values before the residual mix, updated LayerCache).
        Raises:
            ValueError: a cache with a bidirectional layer.
        """
        if cache is not None and not self.causal:
            raise ValueError("a KV cache needs causal attention; bidirectional (Encoder) layers cannot cache")
        q, k, v = self._split_heads(self.to_q(x)), self._split_heads(self.to_k(x)), self._split_heads(self.to_v(x))
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        own_values = v
        if self.value_residual is not None and first_values is not None:
            v = self.value_residual(v, first_values, x)

        log_fgate = log_bgate = dense_bias = None
        if self.bias is not None and self.bias.kind == "decay":
            gates = self.bias(x, mask)
            log_fgate, log_bgate = gates.log_fgate, gates.log_bgate
        elif self.bias is not None:
            dense_bias = self.bias(x, positions, positions)

        if cache is not None:
            k, v = extend(cache.k, k, 2), extend(cache.v, v, 2)
            if log_fgate is not None:
                log_fgate = extend(cache.log_fgate, log_fgate, 2)
        new_cache = LayerCache(k, v, log_fgate)

        out = attend(
            q,
            k,
            v,
            causal=self.causal,
            mask=key_mask,
            log_fgate=log_fgate,
            log_bgate=log_bgate,
            bias=dense_bias,
            backend=self.backend,
        )
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1)), own_values, new_cache


_ = torch
