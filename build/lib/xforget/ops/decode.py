"""Few-query backend for KV-cached decoding and short chunked prefill.

With n_q queries (1 when decoding) the (b, h, n_q, n_k) logits are only
O(n_k) memory, so the decay bias c_i - c_j is added to them directly. This
avoids the fold's appended key channels, which would copy the whole KV cache
at every decoded token. Causal only; logits and softmax in >= fp32.
"""

from __future__ import annotations

from typing import Optional

import torch

from .common import Shapes, Tensor, cumulative_gate, default_scale, valid_rows, zero_invalid_rows

MAX_DECODE_QUERIES = 16


def decode_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_fgate: Optional[Tensor],
    *,
    shapes: Shapes,
    causal: bool = True,
    mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    log_bgate: Optional[Tensor] = None,
) -> Tensor:
    """Causal forgetting attention for few queries (the last n_q positions).

    Shapes as in :func:`xforget.ops.forgetting_attention`. Memory
    O(b * h * n_q * n_k).

    Raises:
        ValueError: ``causal=False`` (use "chunked").
    """
    if not causal:
        raise ValueError("backend 'decode' is causal only; use 'chunked' or 'reference' for bidirectional attention")
    s = shapes
    b, h, m, d = q.shape
    h_kv, g = s.h_kv, s.h // s.h_kv
    ct = torch.promote_types(q.dtype, torch.float32)
    scale = default_scale(s.d, scale)
    # grouped-query logits without copying k: query head i reads kv head i // g
    logits = torch.matmul(q.to(ct).reshape(b, h_kv, g * m, d), k.to(ct).transpose(-1, -2)).view(b, h, m, s.n_k)
    logits = logits * scale
    c = cumulative_gate(log_fgate, mask, s)
    if c is not None:
        logits = logits + (c[..., s.offset :, None] - c[..., None, :])
    if m > 1:  # keys after each query (only among the last m) are hidden
        k_pos = torch.arange(s.n_k, device=q.device)
        hidden = k_pos[None, :] > torch.arange(s.offset, s.n_k, device=q.device)[:, None]
        logits = logits.masked_fill(hidden, float("-inf"))
    rows = valid_rows(mask, s, causal=True)
    if mask is not None:
        keep = mask[:, None, None, :] | ~rows[:, None, :, None]  # fully masked rows stay finite, zeroed below
        logits = logits.masked_fill(~keep, float("-inf"))
    p = logits.softmax(-1)
    out = torch.matmul(p.view(b, h_kv, g * m, s.n_k), v.to(ct)).view(b, h, m, v.shape[-1])
    return zero_invalid_rows(out, rows).to(q.dtype)
