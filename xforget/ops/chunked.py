"""Chunked backend: query blocks of size B over (B x n_k) float tiles.

Serves every case (bidirectional gates, padding, dense extra bias) with
O(B * n_k) live memory: each block is wrapped in ``torch.utils.checkpoint``, so
backward keeps only the block inputs and recomputes the tile.  In the causal
case a block only reads keys up to its last query.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from xforget.ops.common import Shapes, Tensor, cumulative_gate, default_scale, needs_grad, valid_rows, zero_invalid_rows
from xforget.ops.reference import compute_dtype, dense_block

# Aim for tiles of about this many float elements (b * h * B * n_k): 16 Mi = 64 MB fp32.
TILE_ELEMENTS = 1 << 24


def pick_block_size(s: Shapes) -> int:
    per_row = max(1, s.b * s.h * s.n_k)
    block = TILE_ELEMENTS // per_row
    return int(min(max(block, 16), 1024, max(s.n_q, 1)))


def chunked_attention(
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
    bias: Optional[Tensor] = None,
    block_size: Optional[int] = None,
) -> Tensor:
    """Forgetting attention computed block by block in >= fp32; returns q's dtype."""
    s = shapes
    ct = compute_dtype(q.dtype)
    scale = default_scale(s.d, scale)
    block = block_size or pick_block_size(s)
    c = cumulative_gate(log_fgate, mask, s)
    r = cumulative_gate(log_bgate, mask, s) if not causal else None
    if bias is not None:
        bias = bias.expand(s.b, s.h, s.n_q, s.n_k)

    qf, kf, vf = q.to(ct), k.to(ct), v.to(ct)
    k_pos_all = torch.arange(s.n_k, device=q.device)
    use_ckpt = needs_grad(q, k, v, log_fgate, log_bgate, bias)

    outs = []
    for start in range(0, s.n_q, block):
        stop = min(start + block, s.n_q)
        q_pos = k_pos_all[s.offset + start: s.offset + stop]
        n_keys = s.offset + stop if causal else s.n_k  # causal blocks never read future keys
        args = (
            qf[:, :, start:stop],
            kf[:, :, :n_keys],
            vf[:, :, :n_keys],
            c,
            r,
            None if mask is None else mask[:, :n_keys],
            q_pos,
            k_pos_all[:n_keys],
            None if bias is None else bias[:, :, start:stop, :n_keys],
            causal,
            scale,
        )
        if use_ckpt:
            outs.append(checkpoint(dense_block, *args, use_reentrant=False))
        else:
            outs.append(dense_block(*args))
    out = torch.cat(outs, dim=2)
    return zero_invalid_rows(out, valid_rows(mask, s, causal)).to(q.dtype)
