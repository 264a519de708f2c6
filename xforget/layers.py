"""Stacks of attention and feed-forward blocks: ``Decoder`` (causal) and ``Encoder``.

Each block is pre-norm: x = x + Attention(norm(x)); x = x + FeedForward(norm(x)),
with a final norm after the last block. One ``position=`` flag picks the
positional scheme(s); see :mod:`xforget.positions`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .aliases import translate_x_transformers_kwargs
from .attention import Attention
from .cache import LayerCache
from .feedforward import FeedForward
from .norms import make_norm
from .positions import resolve_position
from .rotary import RotaryEmbedding
from .value_residual import VALUE_RESIDUAL_MIXES


class Block(nn.Module):
    """One pre-norm attention + feed-forward block."""

    def __init__(self, dim: int, attn: Attention, ff: FeedForward, norm: str) -> None:
        super().__init__()
        self.attn_norm, self.attn = make_norm(norm, dim), attn
        self.ff_norm, self.ff = make_norm(norm, dim), ff

    def forward(self, x: Tensor, **attn_kwargs) -> tuple[Tensor, Tensor, LayerCache]:
        out, values, cache = self.attn(self.attn_norm(x), **attn_kwargs)
        x = x + out
        return x + self.ff(self.ff_norm(x)), values, cache


class AttentionLayers(nn.Module):
    """A stack of ``depth`` blocks.

    Args:
        dim: model width.
        depth: number of blocks.
        heads: attention heads (must divide dim unless dim_head is given).
        causal: causal (Decoder) or bidirectional (Encoder).
        position: scheme name or list of names (``none``, ``absolute``,
            ``rotary``, ``alibi``, ``fox``, and any registered bias).
        dim_head: channels per head (default dim // heads).
        ff_mult, ff_activation, norm, dropout: feed-forward and norm options.
        forget_gate_divisor, forget_gate_bias_init: FoX gate options.
        alibi_num_heads: ALiBi on the first N heads only.
        rotary_dim, rotary_base: rotary options.
        value_residual, value_residual_mix: ResFormer value residual.
        attn_backend: attention kernel override ("auto", "reference", "fold", ...).
        **kwargs: x-transformers flag names (see :mod:`xforget.aliases`).
    Raises:
        ValueError: invalid geometry or options, naming the field.
        TypeError: an unknown keyword, listing the valid ones.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        *,
        causal: bool = True,
        position: str | Sequence[str] = "none",
        dim_head: int | None = None,
        ff_mult: float = 4,
        ff_activation: str = "gelu",
        norm: str = "layernorm",
        dropout: float = 0.0,
        forget_gate_divisor: float = 1.0,
        forget_gate_bias_init: float = 0.0,
        alibi_num_heads: int | None = None,
        rotary_dim: int | None = None,
        rotary_base: float = 10000.0,
        value_residual: bool = False,
        value_residual_mix: str = "learned",
        attn_backend: str | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or depth < 1 or heads < 1:
            raise ValueError(f"dim, depth and heads must be >= 1, got dim={dim}, depth={depth}, heads={heads}")
        if dim_head is None and dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim} (or give dim_head explicitly)")
        if value_residual_mix not in VALUE_RESIDUAL_MIXES:
            raise ValueError(f"value_residual_mix must be one of {list(VALUE_RESIDUAL_MIXES)}, got {value_residual_mix!r}")
        self.dim, self.depth, self.heads, self.causal = dim, depth, heads, causal
        self.plan = resolve_position(position)
        head_dim = dim // heads if dim_head is None else dim_head
        self.rotary = RotaryEmbedding(head_dim, rotary_dim, rotary_base) if self.plan.rotary else None
        bias_options = dict(
            forget_gate_divisor=forget_gate_divisor,
            forget_gate_bias_init=forget_gate_bias_init,
            alibi_num_heads=alibi_num_heads,
        )
        self.value_residual = value_residual
        self.blocks = nn.ModuleList(
            Block(
                dim,
                Attention(
                    dim,
                    heads,
                    dim_head=dim_head,
                    causal=causal,
                    bias=self.plan.bias,
                    bias_options=bias_options,
                    rotary=self.rotary,
                    value_residual_mix=value_residual_mix if value_residual and i > 0 else None,
                    backend=attn_backend,
                ),
                FeedForward(dim, ff_mult, ff_activation, dropout),
                norm,
            )
            for i in range(depth)
        )
        self.final_norm = make_norm(norm, dim)

    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor,
        mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        caches: list[LayerCache] | None = None,
    ) -> tuple[Tensor, list[LayerCache]]:
        """x (batch, n, dim) -> (batch, n, dim), plus the updated per-layer caches.

        positions: (n,) or (batch, n) int64; mask: (batch, n) bool for the new
        tokens; key_mask: (batch, n_cached + n) bool; caches: one per block or None.
        """
        first_values = None
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, values, cache = block(
                x,
                positions=positions,
                mask=mask,
                key_mask=key_mask,
                first_values=first_values,
                cache=None if caches is None else caches[i],
            )
            if i == 0 and self.value_residual:
                first_values = values
            new_caches.append(cache)
        return self.final_norm(x), new_caches


def _check_keywords(cls_name: str, kwargs: dict) -> None:
    valid = [p for p in inspect.signature(AttentionLayers.__init__).parameters if p not in ("self", "causal")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"{cls_name}: unknown option(s) {unknown}; valid options: {valid} (plus x-transformers aliases)")


class Decoder(AttentionLayers):
    """Causal stack. Accepts x-transformers flag names as aliases."""

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs) -> None:
        kwargs = translate_x_transformers_kwargs(kwargs)
        if "causal" in kwargs:
            raise TypeError("Decoder is always causal; use Encoder for bidirectional attention")
        _check_keywords("Decoder", kwargs)
        super().__init__(dim, depth, heads, causal=True, **kwargs)


class Encoder(AttentionLayers):
    """Bidirectional stack (the forget gate gets a second, backward gate). Accepts x-transformers aliases."""

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs) -> None:
        kwargs = translate_x_transformers_kwargs(kwargs)
        if "causal" in kwargs:
            raise TypeError("Encoder is always bidirectional; use Decoder for causal attention")
        _check_keywords("Encoder", kwargs)
        super().__init__(dim, depth, heads, causal=False, **kwargs)


_ = torch
