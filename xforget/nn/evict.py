"""Evict KV-cache positions that every head has provably forgotten (bounded-memory decoding).

Adaptive computation pruning (``xforget.ops.prune``) skips forgotten keys; in
long generation with fast-forgetting layers they can be dropped from the cache
for good.  Future queries are unknown, so the bound uses what the weights
allow for *any* input:

* pre-norm (or sandwich) layers see a normed input of L2 norm at most
  ``N = sqrt(dim) * max|gain| + |bias|`` (LayerNorm; RMSNorm without the bias;
  ScaleNorm ``|g|``);
* so ``|q_h| <= ||W_q,h||_2 * N`` and ``|k| <= ||W_k,h||_2 * N`` (spectral
  norms per head; rotary keeps norms; the KV-shift mixes keys convexly), or
  ``sqrt(d) * max|gain_h|`` with QK-norm.

For a future query i (after the current last position T) and a cached key j:
``log(w_ij / w_ii) <= (c_T - c_j) + scale * Qmax * (|k_j| + Kmax)`` since
``c_i <= c_T``.  Per layer and head we keep ``L = log sum over evicted keys of
exp(that bound)``, measured relative to the newest position (it only
decreases as decoding continues: ``L += log f`` of every new token).  A prefix
is evicted only while ``L <= log(eps)`` for every head of every layer, so the
evicted mass of every future row stays below ``eps`` and each output channel
moves by at most ``eps * (max v - min v)``, on top of the op's own pruning.
One prefix length is evicted for the whole stack (the cache keeps one key
mask), i.e. the positions that every head of every layer has forgotten.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from typing import TYPE_CHECKING

from xforget.nn.norms import RMSNorm, ScaleNorm

if TYPE_CHECKING:  # annotations only: the cache calls this module, the attention layer calls the cache
    from xforget.nn.attention import Attention
    from xforget.nn.kv_cache import Cache


def norm_output_bound(norm: nn.Module | None, dim: int) -> float:
    """Largest L2 norm the layer input can have after ``norm``; ValueError when unbounded."""
    if isinstance(norm, nn.LayerNorm):
        w = norm.weight.detach().abs().max().item() if norm.weight is not None else 1.0
        b = norm.bias.detach().norm().item() if norm.bias is not None else 0.0
        return math.sqrt(dim) * w + b
    if isinstance(norm, RMSNorm):
        return math.sqrt(dim) * norm.weight.detach().abs().max().item()
    if isinstance(norm, ScaleNorm):
        return abs(norm.g.detach().item())
    raise ValueError("evict_forgotten needs pre-norm or sandwich layers (norm_style='pre'|'sandwich'): "
                     "with post-norm the attention input is unbounded, so no key is provably forgotten")


def logit_norm_bounds(attn: Attention, in_bound: float) -> tuple[Tensor, Tensor]:
    """(Qmax (heads,), Kmax (heads,)) bounds on |q| and |k| per query head."""
    h, hk, d = attn.heads, attn.kv_heads, attn.dim_head
    if attn.rotary is not None and attn.rotary.xpos:
        raise ValueError("evict_forgotten does not support xPos (its scale grows with position)")

    def spectral(w: Tensor, heads: int) -> Tensor:
        return torch.linalg.matrix_norm(w.detach().float().view(heads, d, -1), ord=2)

    if attn.q_norm is not None:
        qmax = math.sqrt(d) * attn.q_norm.gain.detach().abs().amax(-1).float()
        kmax = math.sqrt(d) * attn.k_norm.gain.detach().abs().amax(-1).float()
    else:
        qmax = spectral(attn.to_q.weight, h) * in_bound
        kmax = spectral(attn.to_k.weight, hk) * in_bound
    return qmax, kmax.repeat_interleave(h // hk)


@torch.no_grad()
def forgotten_prefix(model: nn.Module, cache: Cache, eps: float = 1e-6) -> tuple[int, list[Tensor]]:
    """How long a cached prefix every head of every layer has provably forgotten.

    Args:
        model: the :class:`~xforget.TransformerWrapper` that produced ``cache``.
        cache: its KV cache (decay-bias layers only: FoX, ALiBi).
        eps: evicted attention mass per future row, in (0, 1).
    Returns:
        ``(keep_from, evicted)``: the prefix length that may go, and per layer the (batch, heads) float32
        log-bound on the evicted mass after dropping it (see :meth:`xforget.nn.kv_cache.Cache.evict_forgotten`).
    Raises:
        ValueError: a layer without a decay bias, post-norm, xPos, eps outside (0, 1).
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1) (evicted attention mass per row), got {eps!r}")
    subs = [s for s in model.attn_layers.sublayers() if s.kind == "a"]
    if len(subs) != len(cache.layers) or not cache.layers:
        raise ValueError(f"cache has {len(cache.layers)} layers, the model {len(subs)} self-attention layers")
    n = cache.length
    keep_from = n
    news = []
    for sub, layer in zip(subs, cache.layers):
        attn: Attention = sub.fn
        if layer.log_fgate is None:
            raise ValueError("evict_forgotten needs a decay bias (fox, alibi) in every layer: "
                             "without one no key is ever forgotten")
        qmax, kmax = logit_norm_bounds(attn, norm_output_bound(sub.norm, attn.to_q.in_features))
        lf = layer.log_fgate.float()
        b, h, _ = lf.shape
        if cache.mask is not None:
            lf = lf.masked_fill(~cache.mask[:, None, :], 0.0)
        c = lf.cumsum(-1)
        kn = layer.k_norm if layer.k_norm is not None else layer.k.float().norm(dim=-1)
        kn = kn.float().repeat_interleave(h // kn.shape[1], dim=1)
        scale = 1.0 / math.sqrt(attn.dim_head)
        term = (c[..., -1:] - c) + scale * qmax[None, :, None] * (kn + kmax[None, :, None])
        if cache.mask is not None:  # pad keys have weight 0
            term = term.masked_fill(~cache.mask[:, None, :], float("-inf"))
        prev = layer.evicted if layer.evicted is not None else torch.full((b, h), float("-inf"))
        total = torch.logaddexp(prev[..., None], term.logcumsumexp(-1))  # (b, h, n): evict prefix [0, p]
        ok = (total <= math.log(eps)).all(0).all(0)  # (n,)
        p = int(ok.long().cumprod(0).sum())
        keep_from = min(keep_from, p)
        news.append((prev, total))
    return keep_from, [total[..., keep_from - 1] if keep_from else prev for prev, total in news]


def evict_forgotten(model: nn.Module, cache: "Cache", eps: float = 1e-6) -> "Cache":
    """``cache.evict_forgotten(model, eps)`` (:meth:`xforget.nn.kv_cache.Cache.evict_forgotten`), under its old
    function form."""
    return cache.evict_forgotten(model, eps)
