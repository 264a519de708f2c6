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

from xforget.ops.backend import AttentionCall
from xforget.ops.common import Shapes, Tensor, compute_dtype, needs_grad
from xforget.ops.reference import dense_block

# Aim for tiles of about this many float elements (b * h * B * n_k): 16 Mi = 64 MB fp32.
TILE_ELEMENTS = 1 << 24


def pick_block_size(s: Shapes) -> int:
    per_row = max(1, s.b * s.h * s.n_k)
    block = TILE_ELEMENTS // per_row
    return int(min(max(block, 16), 1024, max(s.n_q, 1)))


def chunked_attention(call: AttentionCall, *, block_size: Optional[int] = None) -> Tensor:
    """Forgetting attention computed block by block in >= fp32 (serves every case, takes a matrix bias).

    ``block_size``: queries per block (default :func:`pick_block_size`).  Returns q's dtype.
    """
    s = call.shapes
    ct = compute_dtype(call.q.dtype)
    block = block_size or pick_block_size(s)
    c, r = call.forward_decay(), call.backward_decay()
    bias = None if call.bias is None else call.bias.expand(s.b, s.h, s.n_q, s.n_k)
    mask = call.mask

    qf, kf, vf = call.q.to(ct), call.k.to(ct), call.v.to(ct)
    k_pos_all = torch.arange(s.n_k, device=qf.device)
    use_ckpt = needs_grad(call.q, call.k, call.v, call.log_fgate, call.log_bgate, bias)

    outs = []
    for start in range(0, s.n_q, block):
        stop = min(start + block, s.n_q)
        q_pos = k_pos_all[s.offset + start: s.offset + stop]
        n_keys = s.offset + stop if call.causal else s.n_k  # causal blocks never read future keys
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
            call.causal,
            call.scale,
            call.document_ids,
        )
        if use_ckpt:
            outs.append(checkpoint(dense_block, *args, use_reentrant=False))
        else:
            outs.append(dense_block(*args))
    return call.finish(torch.cat(outs, dim=2))
