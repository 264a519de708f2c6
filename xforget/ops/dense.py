"""Materialised attention for the options that act on the logits or the probabilities.

``softclamp_logits`` (Gemma 2, arXiv 2408.00118, section 2: logits <- c * tanh(logits / c))
and attention-probability dropout (Vaswani et al. 2017, section 5.4) need the
(b, h, n_q, n_k) logits, which the fused kernels of :mod:`xforget.ops` never
build. The attention layer routes here only when one of them is active (dropout
only while training); every bias is first made dense:

    logits = q k^T / sqrt(d) + D + B        (D: decay bias from log gates, B: matrix bias)
    logits = c * tanh(logits / c)           (softclamp, after the biases, as in x-transformers)
    p      = dropout(softmax(logits + masks))

Memory keys (:mod:`xforget.nn.memory_kv`) come first with bias 0 and are always
visible. Everything is computed in float32 (or float64); rows without a
visible key give 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from xforget.ops.common import expand_kv


def decay_bias(
    log_fgate: Tensor | None, log_bgate: Tensor | None, mask: Tensor | None, n_q: int, causal: bool
) -> Tensor | None:
    """Dense decay bias D (b, h, n_q, n_k) from per-key log gates (b, h, n_k) (DESIGN.md section 2).

    D_ij = c_i - c_j for j <= i (c = cumsum log f) and r_j - r_i for j > i when
    bidirectional (r = cumsum log g); pads contribute 0. Queries are the last n_q keys.
    """
    if log_fgate is None and (causal or log_bgate is None):
        return None
    ref = log_fgate if log_fgate is not None else log_bgate
    n_k = ref.shape[-1]
    k_pos = torch.arange(n_k, device=ref.device)
    q_pos = k_pos[n_k - n_q :]
    lower = k_pos[None, :] <= q_pos[:, None]

    def cumulative(g: Tensor) -> Tensor:
        g = g.to(torch.promote_types(g.dtype, torch.float32))
        if mask is not None:
            g = g.masked_fill(~mask[:, None, :], 0.0)
        return g.cumsum(-1)

    out = 0.0
    if log_fgate is not None:
        c = cumulative(log_fgate)
        out = out + torch.where(lower, c[..., q_pos, None] - c[..., None, :], 0.0)
    if log_bgate is not None and not causal:
        r = cumulative(log_bgate)
        out = out + torch.where(lower, 0.0, r[..., None, :] - r[..., q_pos, None])
    return out


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    mask: Tensor | None = None,
    log_fgate: Tensor | None = None,
    log_bgate: Tensor | None = None,
    bias: Tensor | None = None,
    memory: tuple[Tensor, Tensor] | None = None,
    softclamp: float | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """softmax(softclamp(q k^T / sqrt(d) + D + bias) + masks) v with optional dropout on the weights.

    Args:
        q: (b, h, n_q, d); k, v: (b, h_kv, n_k, d) (h_kv divides h); queries are the last n_q keys.
        causal: mask keys after each query.
        mask: (b, n_k) bool key mask (True = real) or None.
        log_fgate, log_bgate: (b, h, n_k) decay gates (see :func:`decay_bias`) or None.
        bias: dense bias broadcastable to (b, h, n_q, n_k) or None.
        memory: (mem_k, mem_v), each (b, h_kv, m, d), prepended unmasked with bias 0.
        softclamp: c > 0 or None.
        dropout: probability of zeroing an attention weight (inverted dropout); 0 = none.
    Returns:
        (b, h, n_q, d) in q's dtype.
    """
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    ct = torch.promote_types(q.dtype, torch.float32)
    k, v = expand_kv(k, h).to(ct), expand_kv(v, h).to(ct)
    logits = (q.to(ct) @ k.transpose(-1, -2)) / math.sqrt(d)
    dec = decay_bias(log_fgate, log_bgate, mask, n_q, causal)
    if dec is not None:
        logits = logits + dec.to(ct)
    if bias is not None:
        logits = logits + bias.to(ct)

    k_pos = torch.arange(n_k, device=q.device)
    allowed = (k_pos[None, :] <= k_pos[n_k - n_q :, None]) if causal else torch.ones(n_q, n_k, dtype=torch.bool, device=q.device)
    allowed = allowed[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    if memory is not None:
        mk, mv = (expand_kv(t, h).to(ct) for t in memory)
        logits = torch.cat(((q.to(ct) @ mk.transpose(-1, -2)) / math.sqrt(d), logits), dim=-1)
        v = torch.cat((mv, v), dim=2)
        allowed = F.pad(allowed.expand(b, h, n_q, n_k), (mk.shape[2], 0), value=True)
    if softclamp is not None:
        logits = torch.tanh(logits / softclamp) * softclamp

    allowed = allowed.expand(logits.shape)
    row_ok = allowed.any(-1, keepdim=True)
    logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~row_ok, 0.0)
    p = logits.softmax(-1).masked_fill(~row_ok, 0.0)
    if dropout > 0:
        p = F.dropout(p, dropout, training=True)
    return (p @ v).to(q.dtype)
