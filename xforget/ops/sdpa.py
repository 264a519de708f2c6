"""Ungated attention through ``F.scaled_dot_product_attention``.

* :func:`plain_attention`: no bias at all (causal, bidirectional, padded).
* :func:`dense_bias_attention`: a matrix-shaped additive bias (T5-style).  The
  causal and padding masks are combined as *booleans* and applied with
  ``masked_fill(-inf)`` on an fp32 bias; half-precision inputs are computed in
  fp32 so neither the bias nor a large negative is ever rounded to fp16/bf16
  (DESIGN.md section 4, item 5).  Fully masked rows give 0.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from xforget.ops.common import Shapes, Tensor, default_scale, expand_kv, valid_rows, zero_invalid_rows
from xforget.ops.decode import MAX_DECODE_QUERIES, decode_attention
from xforget.ops.fold import causal_sdpa, fold_attention


def plain_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    shapes: Shapes,
    causal: bool,
    mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    s = shapes
    scale = default_scale(s.d, scale)
    gqa = s.h != s.h_kv
    if causal:
        if mask is None:
            return causal_sdpa(q, k, v, s.n_q, s.n_k, scale, enable_gqa=gqa)
        if s.n_q <= MAX_DECODE_QUERIES and s.n_q < s.n_k:  # padded decoding: no cache copy
            return decode_attention(q, k, v, None, shapes=s, causal=True, mask=mask, scale=scale)
        # padding folded into one key channel: O(n) memory, no n x n mask
        return fold_attention(q, k, v, None, shapes=s, causal=True, mask=mask, scale=scale)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    rows = valid_rows(mask, s, causal=False)  # (b, n_q): batch has any real key
    key_mask = mask | ~mask.any(-1, keepdim=True)  # keep fully padded batches finite, zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], scale=scale, enable_gqa=gqa)
    return zero_invalid_rows(out, rows)


def dense_bias_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    *,
    shapes: Shapes,
    causal: bool,
    mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    s = shapes
    scale = default_scale(s.d, scale)
    ct = torch.promote_types(q.dtype, torch.float32)
    allowed = None
    if causal:
        k_pos = torch.arange(s.n_k, device=q.device)
        allowed = (k_pos[None, :] <= k_pos[s.offset:, None])[None, None]  # (1, 1, n_q, n_k)
    if mask is not None:
        km = mask[:, None, None, :]
        allowed = km if allowed is None else allowed & km
    rows = None
    attn_bias = bias.to(ct)
    if allowed is not None:
        rows = allowed.any(-1, keepdim=True)
        allowed = allowed | ~rows  # fully masked rows: attend anywhere, zeroed below
        attn_bias = attn_bias.masked_fill(~allowed, float("-inf"))
    attn_bias = attn_bias.expand(s.b, s.h, s.n_q, s.n_k)
    out = F.scaled_dot_product_attention(
        q.to(ct), expand_kv(k, s.h).to(ct), expand_kv(v, s.h).to(ct), attn_mask=attn_bias, scale=scale
    )
    if rows is not None:
        out = out * rows.to(out.dtype)
    return out.to(q.dtype)
