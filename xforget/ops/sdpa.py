"""Ungated attention through ``F.scaled_dot_product_attention``.

* :func:`plain_attention`: no bias at all (causal, bidirectional, padded).
* :func:`dense_bias_attention`: a matrix-shaped additive bias (T5-style).  The
  causal and padding masks are combined as *booleans* and applied with
  ``masked_fill(-inf)`` on an fp32 bias; half-precision inputs are computed in
  fp32 so neither the bias nor a large negative is ever rounded to fp16/bf16
  (DESIGN.md section 4, item 5).  Fully masked rows give 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xforget.ops.backend import AttentionCall
from xforget.ops.common import Tensor, compute_dtype, expand_kv
from xforget.ops.documents import mask_matrix
from xforget.ops.decode import MAX_DECODE_QUERIES, decode_attention
from xforget.ops.fold import causal_sdpa, fold_attention


def plain_attention(call: AttentionCall) -> Tensor:
    """Attention without gates or bias (causal, bidirectional, padded); returns q's dtype."""
    s, q, k, v, mask, scale = call.shapes, call.q, call.k, call.v, call.mask, call.scale
    gqa = s.h != s.h_kv
    if call.document_ids is not None:
        return _documents(call)
    if call.causal:
        if mask is None:
            return causal_sdpa(q, k, v, s.n_q, s.n_k, scale, enable_gqa=gqa)
        if s.n_q <= MAX_DECODE_QUERIES and s.n_q < s.n_k:  # padded decoding: no cache copy
            return decode_attention(call)
        # padding folded into one key channel: O(n) memory, no n x n mask
        return fold_attention(call)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    key_mask = mask | ~mask.any(-1, keepdim=True)  # keep fully padded batches finite, zeroed by finish
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], scale=scale, enable_gqa=gqa)
    return call.finish(out)


def _documents(call: AttentionCall) -> Tensor:
    """Packed documents without gates: the fold's document path (causal), a block-diagonal mask otherwise."""
    s = call.shapes
    if call.causal:
        if s.n_q <= MAX_DECODE_QUERIES and s.n_q < s.n_k:
            return decode_attention(call)
        return fold_attention(call)
    allowed = mask_matrix(call.document_ids, s, causal=False)
    if call.mask is not None:
        allowed = allowed & call.mask[:, None, None, :]
    rows = call.rows()
    if rows is not None:
        allowed = allowed | ~rows[:, None, :, None]  # rows without a real key of their document: zeroed by finish
    out = F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=allowed, scale=call.scale,
                                         enable_gqa=s.h != s.h_kv)
    return call.finish(out)


def dense_bias_attention(call: AttentionCall) -> Tensor:
    """Attention with a matrix bias and no gates, in >= fp32; returns q's dtype."""
    s, q = call.shapes, call.q
    ct = compute_dtype(q.dtype)
    allowed = None
    if call.causal:
        k_pos = torch.arange(s.n_k, device=q.device)
        allowed = (k_pos[None, :] <= k_pos[s.offset:, None])[None, None]  # (1, 1, n_q, n_k)
    if call.mask is not None:
        km = call.mask[:, None, None, :]
        allowed = km if allowed is None else allowed & km
    if call.document_ids is not None:  # packed documents: the block-diagonal mask, as booleans
        k_pos = torch.arange(s.n_k, device=q.device)
        docs = call.document_mask(k_pos[s.offset:], k_pos)
        allowed = docs if allowed is None else allowed & docs
    rows = None
    attn_bias = call.bias.to(ct)
    if allowed is not None:
        rows = allowed.any(-1, keepdim=True)
        allowed = allowed | ~rows  # fully masked rows: attend anywhere, zeroed below
        attn_bias = attn_bias.masked_fill(~allowed, float("-inf"))
    attn_bias = attn_bias.expand(s.b, s.h, s.n_q, s.n_k)
    out = F.scaled_dot_product_attention(
        q.to(ct), expand_kv(call.k, s.h).to(ct), expand_kv(call.v, s.h).to(ct), attn_mask=attn_bias, scale=call.scale
    )
    if rows is not None:
        out = out * rows.to(out.dtype)
    return out.to(q.dtype)
