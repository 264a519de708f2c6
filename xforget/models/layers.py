"""Stacks of attention and feed-forward sublayers: ``Decoder`` (causal), ``Encoder``,
``CrossAttender``.

A stack is ``depth`` repetitions (blocks) of a layer pattern, a string over

* ``"a"`` self-attention, ``"c"`` cross-attention (to a ``context``), ``"f"`` feed-forward;

default ``"af"`` (``"acf"`` with ``cross_attend=True``, ``"cf"`` for
CrossAttender). For a fully custom sequence give it whole with ``depth=1``
(e.g. ``layer_pattern="aafaf", depth=1``). Each sublayer is a residual branch
whose norms follow ``norm_style`` (pre / post / sandwich, see
:mod:`xforget.nn.norms`). One ``position=`` flag picks the positional scheme(s);
see :mod:`xforget.models.positions`. The options are one
:class:`~xforget.models.layer_options.LayerOptions`, checked up front by
:func:`xforget.models.validate.check_layer_options` and passed down to every
attention layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xforget.models.layer_options import LayerOptions, layer_options
from xforget.models.positions import PositionPlan, resolve_position
from xforget.models.validate import check_layer_options
from xforget.nn.attention import Attention
from xforget.nn.bias import get_bias_builder
from xforget.nn.embeddings import ScaledSinusoidalEmbedding
from xforget.nn.feedforward import FeedForward
from xforget.nn.kv_cache import LayerCache
from xforget.nn.norms import make_norm
from xforget.nn.rotary import RotaryEmbedding

SELF_ATTENTION_INPUTS = ("positions", "mask", "key_mask", "document_ids", "document_memory")
CROSS_ATTENTION_INPUTS = ("context", "context_mask")


class Sublayer(nn.Module):
    """One residual branch: ``kind`` ("a", "c" or "f"), its module ``fn`` and its norms.

    pre: x + fn(norm(x)); post: post_norm(x + fn(x)); sandwich: x + post_branch_norm(fn(norm(x))).
    """

    def __init__(self, kind: str, fn: nn.Module, dim: int, norm: str, norm_style: str) -> None:
        super().__init__()
        self.kind, self.fn = kind, fn
        self.norm = make_norm(norm, dim) if norm_style in ("pre", "sandwich") else None
        self.post_branch_norm = make_norm(norm, dim) if norm_style == "sandwich" else None
        self.post_norm = make_norm(norm, dim) if norm_style == "post" else None

    def forward(self, x: Tensor, **kwargs) -> tuple[Tensor, Tensor | None, LayerCache | None]:
        """x (batch, n, dim) -> (x, values, cache); values/cache are None for non-attention sublayers."""
        h = x if self.norm is None else self.norm(x)
        values = cache = None
        if self.kind == "f":
            out = self.fn(h)
        else:
            out, values, cache = self.fn(h, **kwargs)
        if self.post_branch_norm is not None:
            out = self.post_branch_norm(out)
        x = x + out
        if self.post_norm is not None:
            x = self.post_norm(x)
        return x, values, cache


class Block(nn.Module):
    """One repetition of the layer pattern: a list of :class:`Sublayer`.

    ``block.attn`` / ``block.cross_attn`` / ``block.ff`` are the first module of
    each kind in the block (or None).
    """

    def __init__(self, sublayers: Sequence[Sublayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(sublayers)

    def _first(self, kind: str) -> nn.Module | None:
        return next((layer.fn for layer in self.layers if layer.kind == kind), None)

    @property
    def attn(self) -> Attention | None:
        return self._first("a")

    @property
    def cross_attn(self) -> Attention | None:
        return self._first("c")

    @property
    def ff(self) -> FeedForward | None:
        return self._first("f")

    @property
    def num_self_attn(self) -> int:
        return sum(layer.kind == "a" for layer in self.layers)

    def forward(
        self, x: Tensor, *, first_values: Tensor | None = None, caches: Sequence[LayerCache] | None = None,
        **inputs: Tensor | None,
    ) -> tuple[Tensor, Tensor | None, list[LayerCache]]:
        """Run the sublayers in order.

        ``inputs`` are those of :meth:`AttentionLayers.forward`: each self-attention
        sublayer reads positions, mask and key_mask, each cross-attention sublayer
        context and context_mask. Returns (x, the first self-attention values of the
        stack so far (for the value residual), one new cache per self-attention sublayer).
        """
        self_inputs = {name: inputs.get(name) for name in SELF_ATTENTION_INPUTS}
        cross_inputs = {name: inputs.get(name) for name in CROSS_ATTENTION_INPUTS}
        cache_iter: Iterator | None = None if caches is None else iter(caches)
        new_caches = []
        for layer in self.layers:
            if layer.kind == "a":
                cache = None if cache_iter is None else next(cache_iter)
                x, values, cache = layer(x, first_values=first_values, cache=cache, **self_inputs)
                first_values = values if first_values is None else first_values
                new_caches.append(cache)
            elif layer.kind == "c":
                x, _, _ = layer(x, **cross_inputs)
            else:
                x, _, _ = layer(x)
        return x, first_values, new_caches


class AttentionLayers(nn.Module):
    """A stack of ``depth`` blocks, each one repetition of ``layer_pattern``.

    Args:
        dim: model width.
        depth: number of blocks (repetitions of the pattern).
        heads: attention heads (must divide dim unless dim_head is given).
        causal: causal (Decoder) or bidirectional (Encoder).
        **options: any field of :class:`~xforget.models.layer_options.LayerOptions` (position,
            dim_head, ff_mult, norm, the scheme and attention options, ...; documented
            there and on :class:`~xforget.nn.attention_options.AttentionOptions`), or its
            x-transformers alias (:mod:`xforget.models.aliases`). ``sinusoidal`` positions
            are added to the input here; ``absolute`` (a table of max_seq_len rows) by the wrapper.
    Attributes:
        options: the :class:`~xforget.models.layer_options.LayerOptions` the stack was built from;
            every attention layer gets it too.
        plan: the resolved :class:`~xforget.models.positions.PositionPlan`.
    Raises:
        TypeError: an unknown option, listing the valid ones.
        ValueError: invalid or incompatible options, naming the field (see :mod:`xforget.models.validate`).
    """

    def __init__(self, dim: int, depth: int, heads: int, *, causal: bool = True, **options: Any) -> None:
        super().__init__()
        built = layer_options(type(self).__name__, dict(dim=dim, depth=depth, heads=heads, **options))
        self._build(built, causal, check_layer_options(built, causal=causal))

    @classmethod
    def from_options(cls, options: LayerOptions, *, causal: bool) -> AttentionLayers:
        """The stack for ``options`` that have already been validated (e.g. by
        :func:`~xforget.models.validate.validate_model_config`), without validating them again.

        Raises:
            ValueError: an invalid ``position`` (the rest is not checked again).
        """
        layers = cls.__new__(cls)  # skips the keyword constructor and its validation
        nn.Module.__init__(layers)
        layers._build(options, causal, resolve_position(options.position))
        return layers

    def _build(self, options: LayerOptions, causal: bool, plan: PositionPlan) -> None:
        o = options
        self.options, self.plan = o, plan
        self.dim, self.depth, self.heads, self.causal = o.dim, o.depth, o.heads, causal
        self.layer_pattern = o.layer_pattern or ("acf" if o.cross_attend else "af")
        self.pos_emb = ScaledSinusoidalEmbedding(o.dim) if plan.embedding == "sinusoidal" else None
        self.rotary = (
            RotaryEmbedding(o.head_dim, o.rotary_dim, o.rotary_base, xpos=o.rotary_xpos,
                            xpos_scale_base=o.rotary_xpos_scale_base)
            if plan.rotary
            else None
        )
        bias = plan.bias
        if bias is not None and get_bias_builder(bias).shared:  # one position table for the whole stack
            bias = get_bias_builder(bias).from_options(dim=o.dim, heads=o.heads, causal=causal, options=o.scheme_values())
        self.value_residual = o.value_residual
        first_self_attn = True

        def make(kind: str) -> nn.Module:
            nonlocal first_self_attn
            if kind == "f":
                return FeedForward(o.dim, o.ff_mult, o.ff_activation, o.feedforward_dropout)
            if kind == "c":
                return Attention(o.dim, o.heads, o, causal=False, cross=True, context_dim=o.context_dim)
            mix = o.value_residual_mix if o.value_residual and not first_self_attn else None
            first_self_attn = False
            return Attention(o.dim, o.heads, o, causal=causal, bias=bias, rotary=self.rotary, value_residual_mix=mix)

        self.blocks = nn.ModuleList(
            Block([Sublayer(kind, make(kind), o.dim, o.norm, o.norm_style) for kind in self.layer_pattern])
            for _ in range(o.depth)
        )
        self.final_norm = make_norm(o.norm, o.dim) if o.norm_style != "post" else nn.Identity()

    def sublayers(self) -> Iterator[Sublayer]:
        """All sublayers in execution order."""
        for block in self.blocks:
            yield from block.layers

    def forward(
        self, x: Tensor, *, positions: Tensor | None = None, mask: Tensor | None = None,
        key_mask: Tensor | None = None, caches: list[LayerCache] | None = None,
        context: Tensor | None = None, context_mask: Tensor | None = None,
        document_ids: Tensor | None = None, document_memory: bool = False,
    ) -> tuple[Tensor, list[LayerCache]]:
        """x (batch, n, dim) -> (batch, n, dim), plus the updated caches (one per self-attention sublayer).

        positions: (n,) or (batch, n) int64 (default 0..n-1); mask: (batch, n)
        bool for the new tokens; key_mask: (batch, n_cached + n) bool; caches:
        from an earlier call, or None; context (batch, m, context_dim) and
        context_mask (batch, m) bool for cross-attention sublayers; document_ids:
        (batch, n_cached + n) int64 packed documents of all keys, non-decreasing per row,
        or None (positions are the caller's: :class:`~xforget.models.wrapper.TransformerWrapper`
        restarts them per document); document_memory: the keys with document id
        :data:`~xforget.ops.documents.MEMORY_DOCUMENT` are memory tokens every document sees.
        """
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        if key_mask is None and mask is not None and caches is None:
            key_mask = mask
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions).to(x.dtype)
        first_values = None
        new_caches: list[LayerCache] = []
        start = 0
        for block in self.blocks:
            count = block.num_self_attn
            x, first_values, block_caches = block(
                x,
                positions=positions,
                mask=mask,
                key_mask=key_mask,
                first_values=first_values,
                caches=None if caches is None else caches[start : start + count],
                context=context,
                context_mask=context_mask,
                document_ids=document_ids,
                document_memory=document_memory,
            )
            new_caches.extend(block_caches)
            start += count
        return self.final_norm(x), new_caches


def _fixed_causal(cls_name: str, options: dict, why_no_causal: str) -> None:
    """Reject ``causal``: the class fixes it."""
    if "causal" in options:
        raise TypeError(f"{cls_name} {why_no_causal}")


class Decoder(AttentionLayers):
    """Causal stack. Accepts x-transformers flag names as aliases."""

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs) -> None:
        _fixed_causal("Decoder", kwargs, "is always causal; use Encoder for bidirectional attention")
        super().__init__(dim, depth, heads, causal=True, **kwargs)


class Encoder(AttentionLayers):
    """Bidirectional stack (the forget gate gets a second, backward gate). Accepts x-transformers aliases."""

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs) -> None:
        _fixed_causal("Encoder", kwargs, "is always bidirectional; use Decoder for causal attention")
        super().__init__(dim, depth, heads, causal=False, **kwargs)


class CrossAttender(AttentionLayers):
    """Cross-attention only (pattern "cf" per block): queries from x, keys/values from ``context``.

    ``forward(x, context=..., context_mask=...)``. No positions (the default
    position is "none"). Accepts x-transformers aliases.
    """

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs) -> None:
        _fixed_causal("CrossAttender", kwargs, "is not causal (it attends to a context)")
        kwargs.setdefault("layer_pattern", "cf")
        super().__init__(dim, depth, heads, causal=False, **kwargs)
