"""Multi-head attention with pluggable positional schemes and the FoX Pro options.

One layer, in order (each step optional):

1. q = W_q x; k, v = W_k c, W_v c with c = x (self-attention) or the context
   (cross-attention); ``kv_heads`` < heads gives grouped-query attention
   (Ainslie et al. 2023, arXiv 2305.13245; 1 = multi-query, Shazeer 2019).
2. KV-shift of keys and values (:mod:`xforget.nn.kv_shift`).
3. Value residual mix with the first layer's values (:mod:`xforget.nn.value_residual`).
4. QK-norm: per-head RMSNorm of queries and keys, one weight per head.
5. Rotary (and xPos) at each token's position (:mod:`xforget.nn.rotary`).
6. The bias builder's bias: per-token log gates ("decay") or a dense matrix.
7. Concatenate with the cache; prepend memory key/values (:mod:`xforget.nn.memory_kv`).
8. Attention. The kernel follows from the bias *kind* (decay -> O(n) fold,
   matrix -> dense bias) and the options inside :func:`xforget.ops.attend`
   (one routing decision, :func:`xforget.ops.dispatch.route`); options that need
   the logits themselves (``softclamp_logits``, attention dropout while
   training) take the materialised path of :mod:`xforget.ops.dense`. No scheme
   names appear here.
9. Per-head output RMSNorm, output gate sigmoid(W_g x) (FoX Pro, arXiv
   2503.02130 section 4.2), output projection.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from xforget.nn.bias import BiasBuilder, get_bias_builder
from xforget.nn.kv_cache import LayerCache, extend
from xforget.nn.kv_shift import KVShift
from xforget.nn.memory_kv import MemoryKV
from xforget.nn.norms import HeadL2Norm, HeadRMSNorm
from xforget.nn.attention_options import AttentionOptions, check_attention_options
from xforget.ops import attend
from xforget.ops.documents import same_document
from xforget.nn.rotary import RotaryEmbedding
from xforget.nn.value_residual import ValueResidualMix


def _cat_positions(old: Tensor | None, new: Tensor) -> Tensor:
    """Concatenate key positions of shape (n,) or (b, n) along the last dim."""
    if old is None:
        return new
    if old.ndim != new.ndim:
        b = max(old.shape[0] if old.ndim == 2 else 1, new.shape[0] if new.ndim == 2 else 1)
        old, new = (t if t.ndim == 2 else t.expand(b, -1) for t in (old, new))
    return torch.cat((old, new), dim=-1)


def _shift_documents(document_ids: Tensor | None, n: int) -> Tensor | None:
    """(b, n + 1) document ids of the KV-shift's carried token and the ``n`` new tokens, or None.

    The carried token is the last cached key; without a cache its entry is zeros anyway, and it
    takes the first new token's document.
    """
    if document_ids is None:
        return None
    before = document_ids[:, -n - 1: -n] if document_ids.shape[1] > n else document_ids[:, :1]
    return torch.cat((before, document_ids[:, -n:]), dim=1)


def _visible_keys(document_ids: Tensor, n: int) -> Tensor:
    """(b, 1, n, n_keys) bool: the keys each of the last ``n`` queries may see across documents (its own
    document and the memory tokens; causality is the bias builder's)."""
    keys = torch.arange(document_ids.shape[1], device=document_ids.device)
    return same_document(document_ids, keys[-n:], keys, memory=True)


class Attention(nn.Module):
    """Self- or cross-attention over (batch, n, dim) inputs.

    Args:
        dim: model width.
        heads: query heads.
        options: the layer's :class:`~xforget.nn.attention_options.AttentionOptions` (a stack
            passes its own ``LayerOptions``, which is one); default all defaults.
        causal: causal (decoder) or bidirectional (encoder, cross-attention).
        bias: name of a registered bias builder (built from the scheme options of
            ``options``), a builder instance (shared across layers), or None.
        rotary: a shared :class:`RotaryEmbedding` or None.
        value_residual_mix: None (off), or "fixed" / "learned" for layers after the first.
        cross: cross-attention (keys and values from ``context``; no positions, no cache,
            no KV-shift).
        context_dim: width of the context (default dim).
        **option_values: fields of :class:`~xforget.nn.attention_options.AttentionOptions` that
            replace those of ``options`` (e.g. ``kv_heads=2, qk_norm=True, num_buckets=8``).
    Raises:
        ValueError: invalid options (:func:`~xforget.nn.attention_options.check_attention_options`).
        TypeError: an unknown option.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        options: AttentionOptions | None = None,
        *,
        causal: bool = True,
        bias: str | BiasBuilder | None = None,
        rotary: RotaryEmbedding | None = None,
        value_residual_mix: str | None = None,
        cross: bool = False,
        context_dim: int | None = None,
        **option_values: Any,
    ) -> None:
        super().__init__()
        o = replace(options or AttentionOptions(), **option_values)
        check_attention_options(o, heads)
        dim_head = dim // heads if o.dim_head is None else o.dim_head
        kv_heads = heads if o.kv_heads is None else o.kv_heads
        self.heads, self.kv_heads, self.dim_head, self.causal, self.cross = heads, kv_heads, dim_head, causal, cross
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_k = nn.Linear(context_dim, kv_heads * dim_head, bias=False)
        self.to_v = nn.Linear(context_dim, kv_heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.rotary = rotary
        if isinstance(bias, str):
            bias = get_bias_builder(bias).from_options(dim=dim, heads=heads, causal=causal, options=o.scheme_values())
        self.bias = bias
        self.value_residual = ValueResidualMix(dim, kv_heads, value_residual_mix) if value_residual_mix else None
        self.kv_shift = KVShift(dim, kv_heads) if o.kv_shift and not cross else None
        qk_cls = HeadL2Norm if o.qk_norm == "l2" else HeadRMSNorm
        self.q_norm = qk_cls(heads, dim_head) if o.qk_norm else None
        self.k_norm = qk_cls(kv_heads, dim_head) if o.qk_norm else None
        self.memory = MemoryKV(kv_heads, o.num_mem_kv, dim_head) if o.num_mem_kv > 0 else None
        self.out_norm = HeadRMSNorm(heads, dim_head) if o.output_norm else None
        self.to_gate = nn.Linear(dim, heads * dim_head) if o.output_gate else None
        self.softclamp, self.dropout = o.softclamp_logits, float(o.attention_dropout)
        self.backend = o.attn_backend
        self.prune, self.prune_eps = bool(o.attn_prune), float(o.attn_prune_eps)

    def _split_heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, -1, self.dim_head).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        first_values: Tensor | None = None,
        cache: LayerCache | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
        document_memory: bool = False,
    ) -> tuple[Tensor, Tensor, LayerCache | None]:
        """Attend from the new tokens ``x`` to the cached and new keys (or to ``context``).

        Args:
            x: (batch, n, dim) normed input of the new tokens.
            positions: (n,) or (batch, n) int64 positions of the new tokens.
            mask: (batch, n) bool, True for real new tokens, or None.
            key_mask: (batch, n_cached + n) bool for all keys, or None.
            first_values: the first layer's values of the new tokens
                (batch, kv_heads, n, dim_head) for the value residual, or None.
            cache: this layer's cache of earlier tokens, or None.
            context: (batch, m, context_dim) for cross-attention.
            context_mask: (batch, m) bool for cross-attention, or None.
            document_ids: (batch, n_cached + n) int64 document of every key, non-decreasing along
                each row (packed documents: no attention and no KV-shift across a boundary), or None.
                Cross-attention ignores it (the context is not part of the packed row).
            document_memory: with ``document_ids``, the keys with id
                :data:`~xforget.ops.documents.MEMORY_DOCUMENT` are the model's memory tokens, which
                every document sees (and KV-shifts from) as if they stood right in front of it.
        Returns:
            (out (batch, n, dim), values before the residual mix, updated cache
            (None for cross-attention)).
        Raises:
            ValueError: a cache with a bidirectional layer; cross-attention without context.
        """
        if self.cross:
            return self._cross(x, context, context_mask)
        if cache is not None and not self.causal:
            raise ValueError("a KV cache needs causal attention; bidirectional (Encoder) layers cannot cache")
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self._split_heads(self.to_q(x)), self._split_heads(self.to_k(x)), self._split_heads(self.to_v(x))
        shift = None
        if self.kv_shift is not None:
            k, v, shift = self.kv_shift(k, v, x, mask, None if cache is None else cache.shift,
                                        _shift_documents(document_ids, x.shape[1]), document_memory)
        own_values = v
        if self.value_residual is not None and first_values is not None:
            v = self.value_residual(v, first_values, x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions, is_key=True)

        log_fgate = log_bgate = dense_bias = None
        k_pos = bias_state = None
        if self.bias is not None and self.bias.kind == "decay":
            gates = self.bias(x, mask)
            log_fgate, log_bgate = gates.log_fgate, gates.log_bgate
        elif self.bias is not None:
            k_pos = _cat_positions(None if cache is None else cache.k_pos, positions)
            new_state = self.bias.key_state(x)
            if new_state is not None:
                bias_state = extend(None if cache is None else cache.bias_state, new_state, 2)
            extra = {}
            if document_memory and document_ids is not None:  # a bias that sums over keys must skip other documents
                extra["visible"] = _visible_keys(document_ids, x.shape[1])
            dense_bias = self.bias(x, positions, k_pos, key_state=bias_state, key_mask=key_mask, **extra)

        k_norm = None
        new_log_fgate = log_fgate
        if log_fgate is not None and self.causal and self.prune:  # the pruning bound reads key norms, not keys
            k_norm = k.detach().float().norm(dim=-1)
            if cache is not None:
                old_norm = cache.k_norm if cache.k_norm is not None else cache.k.detach().float().norm(dim=-1)
                k_norm = extend(old_norm, k_norm, 2)
        if cache is not None:
            k, v = extend(cache.k, k, 2), extend(cache.v, v, 2)
            if log_fgate is not None:
                log_fgate = extend(cache.log_fgate, log_fgate, 2)
        evicted = None
        if cache is not None and cache.evicted is not None and new_log_fgate is not None:
            evicted = cache.evicted + new_log_fgate.float().sum(-1)  # the bound decays with every new token
        new_cache = LayerCache(k, v, log_fgate, k_pos=k_pos, bias_state=bias_state, shift=shift, k_norm=k_norm,
                               evicted=evicted)

        out = self._attend(q, k, v, key_mask, log_fgate, log_bgate, dense_bias, key_norm=k_norm,
                           document_ids=document_ids, document_memory=document_memory)
        return self._project_out(out, x), own_values, new_cache

    def _cross(self, x: Tensor, context: Tensor | None, context_mask: Tensor | None) -> tuple[Tensor, None, None]:
        if context is None:
            raise ValueError("a cross-attention layer ('c') needs context=(batch, m, dim) keys and values")
        q, k, v = self._split_heads(self.to_q(x)), self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = self._attend(q, k, v, context_mask, None, None, None, causal=False)
        return self._project_out(out, x), None, None

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_mask: Tensor | None,
        log_fgate: Tensor | None,
        log_bgate: Tensor | None,
        dense_bias: Tensor | None,
        causal: bool | None = None,
        key_norm: Tensor | None = None,
        document_ids: Tensor | None = None,
        document_memory: bool = False,
    ) -> Tensor:
        """Attention of q (b, h, n_q, d) over k, v (b, kv_heads, n_k, d) -> (b, h, n_q, d).

        :func:`xforget.ops.attend` picks the kernel (:func:`xforget.ops.dispatch.route`)
        from the bias kind and this layer's options: memory keys, softclamp, dropout
        (only while training).

        Grouped-query convention: query head i reads KV head ``i % kv_heads``
        (x-transformers' layout, so its GQA weights load unchanged). The kernels
        use the repeat-interleave convention (head j reads KV head ``j // groups``),
        so the query heads -- and everything per query head -- are reordered
        around the call.
        """
        order = None
        if self.kv_heads != self.heads:
            order = torch.arange(self.heads, device=q.device).view(-1, self.kv_heads).t().reshape(-1)

        def reorder(t: Tensor | None) -> Tensor | None:
            return t if order is None or t is None or t.shape[1] == 1 else t[:, order]

        out = attend(
            reorder(q), k, v, causal=self.causal if causal is None else causal, mask=key_mask,
            log_fgate=reorder(log_fgate), log_bgate=reorder(log_bgate), bias=reorder(dense_bias),
            backend=self.backend, prune=self.prune, prune_eps=self.prune_eps, key_norm=key_norm,
            memory=None if self.memory is None else self.memory.batch(q.shape[0], k.dtype),
            softclamp=self.softclamp, dropout=self.dropout if self.training else 0.0, document_ids=document_ids,
            document_memory=document_memory,
        )
        return out if order is None else out[:, order.argsort()]

    def _project_out(self, out: Tensor, x: Tensor) -> Tensor:
        """(b, h, n, d) attention output -> (b, n, dim): output norm, output gate, projection."""
        if self.out_norm is not None:
            out = self.out_norm(out)
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, -1)
        if self.to_gate is not None:
            out = out * torch.sigmoid(self.to_gate(x))
        return self.to_out(out)
