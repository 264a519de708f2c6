"""KV cache for exact incremental decoding.

The cache keeps, per attention layer, what is needed to attend from new tokens
to old ones exactly as the full forward pass would:

* keys (after rotary, at their own positions) and values (after the value
  residual mix), shape (batch, kv_heads, n_cached, dim_head);
* for decay biases (FoX, ALiBi), the per-key log forget values
  log_fgate (batch, heads, n_cached), float32 -- the bias of query i and key j
  is the sum of log f over keys j+1..i, so keeping the raw log f of every cached
  key gives the new queries' decay exactly (x-transformers drops this, so its
  forget gate silently vanishes at one-token decoding);

and, for the whole stack, the key padding mask and the number of real tokens
per row (the next rotary/absolute position).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from xforget.nn.evict import forgotten_prefix


@dataclass
class LayerCache:
    """One self-attention layer's cache.

    Attributes:
        k, v: (batch, kv_heads, n_cached, dim_head) keys after rotary, values after the mixes.
        log_fgate: (batch, heads, n_cached) float32 per-key log forget values of a decay bias, or None.
        k_pos: (n_cached,) or (batch, n_cached) int64 key positions (matrix biases), or None.
        bias_state: (batch, heads, n_cached, ...) per-key state of a matrix bias builder
            (``fox_per_row``: its small gate keys), or None.
        shift: the last real token's un-shifted k~, v~ (:class:`xforget.nn.kv_shift.ShiftState`), or None.
        k_norm: (batch, kv_heads, n_cached) float32 L2 norms of the keys (decay biases: the
            pruning bound of :mod:`xforget.ops.prune` reads them instead of the keys), or None.
        evicted: (batch, heads) float32 log of the bound on the attention mass of keys evicted by
            :meth:`Cache.evict_forgotten`, relative to the newest position, or None (nothing evicted).
    """

    k: Tensor
    v: Tensor
    log_fgate: Tensor | None = None
    k_pos: Tensor | None = None
    bias_state: Tensor | None = None
    shift: Any = None
    k_norm: Tensor | None = None
    evicted: Tensor | None = None

    def crop(self, keep: int) -> "LayerCache":
        """The last ``keep`` positions; the KV-shift state (the last token) is unchanged."""
        return LayerCache(
            self.k[:, :, -keep:],
            self.v[:, :, -keep:],
            None if self.log_fgate is None else self.log_fgate[..., -keep:],
            k_pos=None if self.k_pos is None else self.k_pos[..., -keep:],
            bias_state=None if self.bias_state is None else self.bias_state[:, :, -keep:],
            shift=self.shift,
            k_norm=None if self.k_norm is None else self.k_norm[..., -keep:],
            evicted=self.evicted,
        )


@dataclass
class Cache:
    """Cache of a whole TransformerWrapper.

    Attributes:
        layers: one :class:`LayerCache` per attention layer.
        mask: (batch, n_cached) bool key mask (True = real token) or None (all real).
        seen: (batch,) int64, real tokens consumed so far per row (next position).
        documents: (batch, n_cached) int64 document ids of the cached keys (packed documents,
            :mod:`xforget.ops.documents`), or None (one document per row).
        ends_document: (batch,) bool, the last cached token ended its document (an end-of-text
            token, :class:`~xforget.models.packing.PackedDocuments`), so the next token starts a new
            one; or None (set only by that wrapper: its ids depend on the token before each position).
    """

    layers: list[LayerCache] = field(default_factory=list)
    mask: Tensor | None = None
    seen: Tensor | None = None
    documents: Tensor | None = None
    ends_document: Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached key positions (pads included)."""
        return 0 if not self.layers else self.layers[0].k.shape[2]

    def evict_forgotten(self, model, eps: float = 1e-6) -> "Cache":
        """Drop the prefix every head of every layer has provably forgotten (bound in :mod:`xforget.nn.evict`).

        ``model``: the TransformerWrapper that made this cache; ``eps``: evicted attention mass per
        future row.  Decoding stays exact within ``eps * (max v - min v)`` per output channel.
        """
        keep_from, evicted = forgotten_prefix(model, self, eps)
        if keep_from == 0:
            return self
        keep = self.length - keep_from
        layers = []
        for layer, bound in zip(self.layers, evicted):
            new = layer.crop(keep)
            new.evicted = bound
            layers.append(new)
        return Cache(layers=layers, mask=None if self.mask is None else self.mask[:, keep_from:], seen=self.seen,
                     documents=None if self.documents is None else self.documents[:, keep_from:],
                     ends_document=self.ends_document)

    def crop(self, keep: int) -> "Cache":
        """Keep the last ``keep`` positions (sliding window). Exact for relative schemes:
        positions and decays of the kept keys do not change."""
        if keep >= self.length:
            return self
        return Cache(
            layers=[layer.crop(keep) for layer in self.layers],
            mask=None if self.mask is None else self.mask[:, -keep:],
            seen=self.seen,
            documents=None if self.documents is None else self.documents[:, -keep:],
            ends_document=self.ends_document,
        )


def extend(old: Tensor | None, new: Tensor, dim: int) -> Tensor:
    """Append ``new`` to cached entries ``old`` along ``dim``; returns the joined tensor.

    Without autograd (decoding), entries live in a buffer with spare capacity
    that doubles when full, so appending one token costs O(1) amortised instead
    of re-copying the whole cache every step. The returned tensor is a view of
    that buffer. A cache that was already extended (e.g. two continuations of
    one prompt) is never overwritten: appending to a stale view copies.
    """
    if old is None or old.shape[dim] == 0:
        return _new_buffer(new, dim, new.shape[dim]) if not _tracks_grad(new) else new
    if _tracks_grad(old) or _tracks_grad(new):
        return torch.cat((old, new), dim=dim)
    n, m = old.shape[dim], new.shape[dim]
    buf = old._base
    if (
        buf is not None
        and getattr(buf, "_xforget_filled", None) == n
        and old.data_ptr() == buf.data_ptr()
        and buf.shape[dim] >= n + m
        and buf.dtype == new.dtype
    ):
        buf.narrow(dim, n, m).copy_(new)
        buf._xforget_filled = n + m
        return buf.narrow(dim, 0, n + m)
    joined = _new_buffer(old, dim, n + m)
    buf = joined._base
    buf.narrow(dim, n, m).copy_(new)
    buf._xforget_filled = n + m
    return buf.narrow(dim, 0, n + m)


def _tracks_grad(t: Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def _new_buffer(first: Tensor, dim: int, length: int) -> Tensor:
    """A buffer of capacity max(2 * length, 64) along ``dim`` holding ``first``; returns the filled view."""
    shape = list(first.shape)
    shape[dim] = max(2 * length, 64)
    buf = first.new_empty(shape)
    n = first.shape[dim]
    buf.narrow(dim, 0, n).copy_(first)
    buf._xforget_filled = n
    return buf.narrow(dim, 0, n)
