"""Few-query backend for KV-cached decoding and short chunked prefill.

With n_q queries (1 when decoding) the (b, h, n_q, n_k) logits are only
O(n_k) memory, so the decay bias c_i - c_j is added to them directly. This
avoids the fold's appended key channels, which would copy the whole KV cache
at every decoded token. Causal only; logits and softmax in >= fp32.

Adaptive computation pruning (``prune.py``): per (batch, head) the key prefix
whose weights are all provably below ``prune_eps / n_k`` of the reference
key's is skipped; kv heads shared by several query heads keep the smallest
start of their group.  The bound needs the key norms: pass ``key_norm`` (the
KV cache keeps them) so that a step never rereads the whole cache.
"""

from __future__ import annotations

from typing import Optional

import torch

from xforget.ops import prune as acp
from xforget.ops.backend import AttentionCall
from xforget.ops.common import Shapes, Tensor, compute_dtype, valid_rows, zero_invalid_rows
from xforget.ops.documents import document_rows, same_document, segment_starts

MAX_DECODE_QUERIES = 16


def decode_attention(call: AttentionCall) -> Tensor:
    """Causal forgetting attention for few queries (the last n_q positions).

    Memory O(b * h * n_q * n_k).  ``call.prune``: skip each head's provably
    forgotten key prefix (bound in :mod:`xforget.ops.prune`); not while
    ``torch.compile`` traces (the starts are data-dependent slices), where
    every key is read: the exact op, with no graph break.

    Raises:
        ValueError: ``causal=False`` (use "chunked").
    """
    call.require_causal("decode")
    s, q, k, v, mask, docs = call.shapes, call.q, call.k, call.v, call.mask, call.document_ids
    c = call.forward_decay()
    # Under torch.compile every key is read (the starts are data-dependent slices; the unpruned op is exact).
    if call.prune and (c is not None or docs is not None) and s.n_k > 64 and not torch.compiler.is_compiling():
        out = _pruned(q, k, v, c, mask, s, call.scale, call.prune_eps, call.key_norm, docs)
        if out is not None:
            return out
    return _decode(q, k, v, c, mask, s, call.scale, 0, docs)


def _pruned(q, k, v, c, mask, s: Shapes, scale: float, prune_eps, key_norm, docs) -> Optional[Tensor]:
    """Attention from each (batch, kv head)'s first kept key, or None when nothing is skipped.

    With packed documents no key before the first query's document is read (exact, not a bound)."""
    floor = None if docs is None else segment_starts(docs)[:, s.offset, None]  # (b, 1)
    if c is None:
        start = floor.expand(s.b, s.h).contiguous()
    else:
        kn = acp.key_norms(k, s.h, mask, key_norm)
        start = acp.decode_starts(q, kn, c, mask, s, scale, prune_eps, floor=None if floor is None else floor[..., None])
        start = start if floor is None else torch.maximum(start, floor)  # (b, h)
    g = s.h // s.h_kv
    kv_start = start.view(s.b, s.h_kv, g).amin(-1)  # (b, h_kv): a kv head serves its whole group
    acp.record("decode", kv_start.repeat_interleave(g, dim=1).double() * s.n_q,
               torch.full((s.b, s.h), float(s.n_q * s.offset + s.n_q * (s.n_q + 1) // 2), dtype=torch.float64))
    starts = kv_start.tolist()
    lo = min(min(r) for r in starts)
    if max(max(r) for r in starts) == 0:
        return None
    if all(x == lo for r in starts for x in r):
        return _decode(q, k[:, :, lo:], v[:, :, lo:], _tail(c, lo), _tail(mask, lo), s, scale, lo, _tail(docs, lo))
    return _decode_rows(q, k, v, c, mask, s, scale, starts, docs)


def _tail(t: Optional[Tensor], lo: int) -> Optional[Tensor]:
    return None if t is None else t[..., lo:]


def _decode_rows(q, k, v, c, mask, s: Shapes, scale: float, starts, docs) -> Tensor:
    """One (batch, kv head) at a time, each from its own first kept key."""
    g = s.h // s.h_kv
    outs = []
    for bi in range(s.b):
        heads = []
        for j in range(s.h_kv):
            lo = starts[bi][j]
            hs = slice(j * g, (j + 1) * g)
            sub = Shapes(1, g, 1, s.n_q, s.n_k, s.d, s.d_v)  # _decode drops the first lo keys
            heads.append(_decode(
                q[bi: bi + 1, hs], k[bi: bi + 1, j: j + 1, lo:], v[bi: bi + 1, j: j + 1, lo:],
                None if c is None else c[bi: bi + 1, hs, lo:], None if mask is None else mask[bi: bi + 1, lo:], sub,
                scale, lo, None if docs is None else docs[bi: bi + 1, lo:],
            ))
        outs.append(torch.cat(heads, dim=1))
    return torch.cat(outs, dim=0)


def _decode(q, k, v, c, mask, s: Shapes, scale: float, lo: int, docs: Optional[Tensor] = None) -> Tensor:
    """The few-query attention over keys ``lo:`` (k, v, c, mask, docs already sliced)."""
    if lo:
        s = Shapes(s.b, s.h, s.h_kv, s.n_q, s.n_k - lo, s.d, s.d_v)
    b, h, m, d = q.shape
    h_kv, g = s.h_kv, s.h // s.h_kv
    ct = compute_dtype(q.dtype)
    # grouped-query logits without copying k: query head i reads kv head i // g
    logits = torch.matmul(q.to(ct).reshape(b, h_kv, g * m, d), k.to(ct).transpose(-1, -2)).view(b, h, m, s.n_k)
    logits = logits * scale
    if c is not None:
        logits = logits + (c[..., s.offset :, None] - c[..., None, :])
    if m > 1:  # keys after each query (only among the last m) are hidden
        k_pos = torch.arange(s.n_k, device=q.device)
        hidden = k_pos[None, :] > torch.arange(s.offset, s.n_k, device=q.device)[:, None]
        logits = logits.masked_fill(hidden, float("-inf"))
    if docs is not None:  # packed documents: keys of another document are hidden
        k_pos = torch.arange(s.n_k, device=q.device)
        logits = logits.masked_fill(~same_document(docs, k_pos[s.offset:], k_pos), float("-inf"))
    rows = valid_rows(mask, s, causal=True) if docs is None or mask is None else document_rows(mask, docs, s, True)
    if mask is not None:
        keep = mask[:, None, None, :] | ~rows[:, None, :, None]  # fully masked rows stay finite, zeroed below
        logits = logits.masked_fill(~keep, float("-inf"))
    p = logits.softmax(-1)
    out = torch.matmul(p.view(b, h_kv, g * m, s.n_k), v.to(ct)).view(b, h, m, v.shape[-1])
    return zero_invalid_rows(out, rows).to(q.dtype)
