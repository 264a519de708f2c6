"""Reference backend: the materialised (b, h, n_q, n_k) computation.

Readable, O(n_q * n_k) memory; the oracle the fast backends are compared with.
The decay bias (FoX, Lin et al., ICLR 2025, arXiv 2503.02130) is

    D_ij = c_i - c_j   (j <= i),   c = cumsum(log f)
    D_ij = r_j - r_i   (j >  i, bidirectional only),   r = cumsum(log g)

added to the scaled logits *without* the 1/sqrt(d) scale.
"""

from __future__ import annotations

from typing import Optional

import torch

from xforget.ops.backend import AttentionCall
from xforget.ops.common import Tensor, compute_dtype
from xforget.ops.documents import same_document


def dense_block(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    c: Optional[Tensor],
    r: Optional[Tensor],
    key_mask: Optional[Tensor],
    q_pos: Tensor,
    k_pos: Tensor,
    bias: Optional[Tensor],
    causal: bool,
    scale: float,
    document_ids: Optional[Tensor] = None,
) -> Tensor:
    """Attention of a block of queries over a set of keys, all in float.

    q: (b, h, m, d) compute dtype; k, v: (b, h_kv, n, d) compute dtype;
    c, r: (b, h, n_all) cumulative gates or None, indexed by q_pos / k_pos;
    key_mask: (b, n) bool or None; q_pos: (m,), k_pos: (n,) absolute positions;
    bias: broadcastable to (b, h, m, n) or None; document_ids: (b, n_all) int64 or None,
    indexed by q_pos / k_pos (keys of another document are hidden).  Returns (b, h, m, d_v).
    Rows with no visible key give exactly 0 (and zero gradients).
    """
    b, h, m, d = q.shape
    h_kv = k.shape[1]
    g = h // h_kv
    # grouped-query logits without copying k: (b, h_kv, g, m, n) -> (b, h, m, n)
    logits = torch.einsum("bkgmd,bknd->bkgmn", q.view(b, h_kv, g, m, d), k).reshape(b, h, m, -1)
    logits = logits * scale

    lower = k_pos[None, :] <= q_pos[:, None]  # (m, n): key at or before the query
    if c is not None:
        c_q, c_k = c[..., q_pos], c[..., k_pos]
        logits = logits + torch.where(lower, c_q[..., :, None] - c_k[..., None, :], 0.0).to(logits.dtype)
    if r is not None and not causal:
        r_q, r_k = r[..., q_pos], r[..., k_pos]
        logits = logits + torch.where(lower, 0.0, r_k[..., None, :] - r_q[..., :, None]).to(logits.dtype)
    if bias is not None:
        logits = logits + bias.to(logits.dtype)

    allowed = lower[None, None] if causal else torch.ones_like(lower)[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    if document_ids is not None:
        allowed = allowed & same_document(document_ids, q_pos, k_pos)
    allowed = allowed.expand(logits.shape)
    row_ok = allowed.any(-1, keepdim=True)
    logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~row_ok, 0.0)
    p = logits.softmax(-1).masked_fill(~row_ok, 0.0)
    out = torch.einsum("bkgmn,bknd->bkgmd", p.view(b, h_kv, g, m, -1), v)
    return out.reshape(b, h, m, v.shape[-1])


def reference_attention(call: AttentionCall) -> Tensor:
    """Dense forgetting attention in >= fp32 (serves every case, takes a matrix bias); returns q's dtype."""
    s = call.shapes
    ct = compute_dtype(call.q.dtype)
    k_pos = torch.arange(s.n_k, device=call.q.device)
    out = dense_block(
        call.q.to(ct), call.k.to(ct), call.v.to(ct), call.forward_decay(), call.backward_decay(), call.mask,
        k_pos[s.offset:], k_pos, call.bias, call.causal, call.scale, call.document_ids,
    )
    return call.finish(out)
