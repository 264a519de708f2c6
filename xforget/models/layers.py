"""Stacks of attention and feed-forward sublayers: ``Decoder`` (causal), ``Encoder``,
``CrossAttender``.

A stack is ``depth`` repetitions (blocks) of a layer pattern, a string over

* ``"a"`` self-attention, ``"c"`` cross-attention (to a ``context``), ``"f"`` feed-forward;

default ``"af"`` (``"acf"`` with ``cross_attend=True``, ``"cf"`` for
CrossAttender). For a fully custom sequence give it whole with ``depth=1``
(e.g. ``layer_pattern="aafaf", depth=1``). Each sublayer is a residual branch
whose norms follow ``norm_style`` (pre / post / sandwich, see
:mod:`xforget.nn.norms`). One ``position=`` flag picks the positional scheme(s);
see :mod:`xforget.models.positions`. Every option is checked up front by
:func:`xforget.models.validate.check_layer_options`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from xforget.models.aliases import translate_x_transformers_kwargs
from xforget.nn.attention import Attention
from xforget.nn.kv_cache import LayerCache
from xforget.nn.bias import get_bias_builder
from xforget.nn.embeddings import ScaledSinusoidalEmbedding
from xforget.nn.feedforward import FeedForward
from xforget.nn.norms import make_norm
from xforget.nn.rotary import RotaryEmbedding
from xforget.models.validate import check_layer_options


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
        self,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        first_values: Tensor | None = None,
        caches: Sequence[LayerCache] | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, list[LayerCache]]:
        """Run the sublayers in order.

        Returns (x, the first self-attention values of the stack so far (for the
        value residual), one new cache per self-attention sublayer).
        """
        cache_iter: Iterator | None = None if caches is None else iter(caches)
        new_caches = []
        for layer in self.layers:
            if layer.kind == "a":
                x, values, cache = layer(
                    x, positions=positions, mask=mask, key_mask=key_mask, first_values=first_values,
                    cache=None if cache_iter is None else next(cache_iter),
                )
                first_values = values if first_values is None else first_values
                new_caches.append(cache)
            elif layer.kind == "c":
                x, _, _ = layer(x, context=context, context_mask=context_mask)
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
        position: scheme name or list of names (``none``, ``absolute``,
            ``sinusoidal``, ``rotary``, ``alibi``, ``t5``, ``dynamic``, ``fox``,
            ``fox_per_row``, and any registered bias). ``sinusoidal`` is added to
            the input here; ``absolute`` (a table of max_seq_len rows) by the wrapper.
        dim_head: channels per head (default dim // heads).
        ff_mult, ff_activation: feed-forward width multiplier and activation
            (gelu, relu, relu2, silu, swiglu, geglu).
        norm: layernorm, rmsnorm or scalenorm; norm_style: pre, post or sandwich.
        dropout: default dropout of attention weights and feed-forward activations;
            attn_dropout / ff_dropout override it for one of them.
        forget_gate_divisor, forget_gate_bias_init: FoX gate options (fox, fox_per_row).
        alibi_num_heads: ALiBi on the first N heads only.
        rotary_dim, rotary_base, rotary_xpos, rotary_xpos_scale_base: rotary options.
        num_buckets, max_distance: T5 bias options.
        dynamic_bias_dim, dynamic_bias_depth, dynamic_bias_log_distance: dynamic bias MLP.
        per_row_dim_head: small gate head dim of fox_per_row.
        kv_heads, num_mem_kv, qk_norm, output_gate, kv_shift, output_norm,
            softclamp_logits: attention options (see :class:`xforget.nn.attention.Attention`).
        value_residual, value_residual_mix: ResFormer value residual.
        layer_pattern: the pattern of one block (default "af", "acf" with cross_attend).
        cross_attend: add cross-attention to a context (default pattern "acf").
        context_dim: width of the context (default dim).
        attn_backend: attention kernel override ("auto", "reference", "fold", ...).
        attn_prune: adaptive computation pruning of keys the forget gate (or ALiBi)
            has provably made negligible (:mod:`xforget.ops.prune`); False: exact.
        attn_prune_eps: pruned attention mass per row (default 1e-6).
    Raises:
        ValueError: invalid or incompatible options, naming the field (see :mod:`xforget.models.validate`).
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
        norm_style: str = "pre",
        dropout: float = 0.0,
        attn_dropout: float | None = None,
        ff_dropout: float | None = None,
        forget_gate_divisor: float = 1.0,
        forget_gate_bias_init: float = 0.0,
        alibi_num_heads: int | None = None,
        rotary_dim: int | None = None,
        rotary_base: float = 10000.0,
        rotary_xpos: bool = False,
        rotary_xpos_scale_base: float = 512.0,
        num_buckets: int | None = None,
        max_distance: int | None = None,
        dynamic_bias_dim: int | None = None,
        dynamic_bias_depth: int | None = None,
        dynamic_bias_log_distance: bool = False,
        per_row_dim_head: int | None = None,
        kv_heads: int | None = None,
        num_mem_kv: int = 0,
        qk_norm: bool | str = False,
        output_gate: bool = False,
        kv_shift: bool = False,
        output_norm: bool = False,
        softclamp_logits: float | None = None,
        value_residual: bool = False,
        value_residual_mix: str = "learned",
        layer_pattern: str | None = None,
        cross_attend: bool = False,
        context_dim: int | None = None,
        attn_backend: str | None = None,
        attn_prune: bool = True,
        attn_prune_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        options = {k: v for k, v in locals().items() if k not in ("self", "causal", "__class__")}
        self.plan = plan = check_layer_options(options, causal=causal)
        self.dim, self.depth, self.heads, self.causal = dim, depth, heads, causal
        head_dim = dim // heads if dim_head is None else dim_head
        self.layer_pattern = layer_pattern or ("acf" if cross_attend else "af")
        self.pos_emb = ScaledSinusoidalEmbedding(dim) if plan.embedding == "sinusoidal" else None
        self.rotary = (
            RotaryEmbedding(head_dim, rotary_dim, rotary_base, xpos=rotary_xpos, xpos_scale_base=rotary_xpos_scale_base)
            if plan.rotary
            else None
        )
        bias_options = {k: options[k] for k in (
            "forget_gate_divisor", "forget_gate_bias_init", "alibi_num_heads", "num_buckets", "max_distance",
            "dynamic_bias_dim", "dynamic_bias_depth", "dynamic_bias_log_distance", "per_row_dim_head",
        )}
        bias = plan.bias
        if bias is not None and get_bias_builder(bias).shared:  # one position table for the whole stack
            bias = get_bias_builder(bias).from_options(dim=dim, heads=heads, causal=causal, options=bias_options)
        self.value_residual = value_residual
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        ff_dropout = dropout if ff_dropout is None else ff_dropout
        shared_attn = dict(
            dim_head=dim_head, kv_heads=kv_heads, num_mem_kv=num_mem_kv, qk_norm=qk_norm, output_gate=output_gate,
            output_norm=output_norm, softclamp_logits=softclamp_logits, dropout=attn_dropout, backend=attn_backend,
            prune=attn_prune, prune_eps=attn_prune_eps,
        )
        first_self_attn = True

        def make(kind: str) -> nn.Module:
            nonlocal first_self_attn
            if kind == "f":
                return FeedForward(dim, ff_mult, ff_activation, ff_dropout)
            if kind == "c":
                return Attention(dim, heads, causal=False, cross=True, context_dim=context_dim, **shared_attn)
            mix = value_residual_mix if value_residual and not first_self_attn else None
            first_self_attn = False
            return Attention(
                dim, heads, causal=causal, bias=bias, bias_options=bias_options, rotary=self.rotary,
                value_residual_mix=mix, kv_shift=kv_shift, **shared_attn,
            )

        self.blocks = nn.ModuleList(
            Block([Sublayer(kind, make(kind), dim, norm, norm_style) for kind in self.layer_pattern]) for _ in range(depth)
        )
        self.final_norm = make_norm(norm, dim) if norm_style != "post" else nn.Identity()

    def sublayers(self) -> Iterator[Sublayer]:
        """All sublayers in execution order."""
        for block in self.blocks:
            yield from block.layers

    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        caches: list[LayerCache] | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[LayerCache]]:
        """x (batch, n, dim) -> (batch, n, dim), plus the updated caches (one per self-attention sublayer).

        positions: (n,) or (batch, n) int64 (default 0..n-1); mask: (batch, n)
        bool for the new tokens; key_mask: (batch, n_cached + n) bool; caches:
        from an earlier call, or None; context (batch, m, context_dim) and
        context_mask (batch, m) bool for cross-attention sublayers.
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
            )
            new_caches.extend(block_caches)
            start += count
        return self.final_norm(x), new_caches


def _check_keywords(cls_name: str, kwargs: dict, exclude: tuple[str, ...] = ("self", "causal")) -> None:
    valid = [p for p in inspect.signature(AttentionLayers.__init__).parameters if p not in exclude]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"{cls_name}: unknown option(s) {unknown}; valid options: {valid} (plus x-transformers aliases)")


def _user_options(cls_name: str, kwargs: dict, why_no_causal: str) -> dict:
    """Translate x-transformers aliases, then reject ``causal`` (fixed by the class) and unknown keys."""
    kwargs = translate_x_transformers_kwargs(kwargs)
    if "causal" in kwargs:
        raise TypeError(f"{cls_name} {why_no_causal}")
    _check_keywords(cls_name, kwargs)
    return kwargs


class Decoder(AttentionLayers):
    """Causal stack. Accepts x-transformers flag names as aliases."""

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs) -> None:
        kwargs = _user_options("Decoder", kwargs, "is always causal; use Encoder for bidirectional attention")
        super().__init__(dim, depth, heads, causal=True, **kwargs)


class Encoder(AttentionLayers):
    """Bidirectional stack (the forget gate gets a second, backward gate). Accepts x-transformers aliases."""

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs) -> None:
        kwargs = _user_options("Encoder", kwargs, "is always bidirectional; use Decoder for causal attention")
        super().__init__(dim, depth, heads, causal=False, **kwargs)


class CrossAttender(AttentionLayers):
    """Cross-attention only (pattern "cf" per block): queries from x, keys/values from ``context``.

    ``forward(x, context=..., context_mask=...)``. No positions (the default
    position is "none"). Accepts x-transformers aliases.
    """

    def __init__(self, dim: int, depth: int, heads: int = 8, **kwargs) -> None:
        kwargs = _user_options("CrossAttender", kwargs, "is not causal (it attends to a context)")
        kwargs.setdefault("layer_pattern", "cf")
        super().__init__(dim, depth, heads, causal=False, **kwargs)
