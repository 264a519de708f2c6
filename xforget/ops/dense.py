"""Materialised attention for the options that act on the logits or the probabilities.

``softclamp_logits`` (Gemma 2, arXiv 2408.00118, section 2: logits <- c * tanh(logits / c))
and attention-probability dropout (Vaswani et al. 2017, section 5.4) need the
(b, h, n_q, n_k) logits, which the fused kernels of :mod:`xforget.ops` never
build. :func:`xforget.ops.dispatch.route` sends a call here when one of them is
active (the layer passes dropout only while training), for bidirectional
attention with more queries than keys, and for memory keys with a decay bias
that does not fold (bidirectional, or with a matrix bias too); every bias is
first made dense:

    logits = q k^T * scale + D + B          (D: decay bias from log gates, B: matrix bias)
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

from xforget.ops.backend import AttentionCall, unchecked_call
from xforget.ops.common import compute_dtype, expand_kv


def decay_bias(call: AttentionCall) -> Tensor | None:
    """Dense decay bias D (b, h, n_q, n_k) from the call's per-key log gates (DESIGN.md section 2).

    D_ij = c_i - c_j for j <= i (c = cumsum log f) and r_j - r_i for j > i when
    bidirectional (r = cumsum log g); pads contribute 0. None without gates.
    On the CPU the cumsums and their differences are float64, rounded once to fp32 by the caller's
    sum: an fp32 ``c`` would round every logit at ``6e-8 * |c|`` (FoX with memory tokens and packed
    documents, which only this path serves, was 2.6e-5 off float64 at 1024 tokens).
    """
    wide = None if call.q.is_cuda else torch.float64
    c, r = call.forward_decay(wide), call.backward_decay(wide)
    if c is None and r is None:
        return None
    k_pos = torch.arange(call.shapes.n_k, device=call.q.device)
    q_pos = k_pos[call.shapes.offset :]
    lower = k_pos[None, :] <= q_pos[:, None]
    out = 0.0
    if c is not None:
        out = out + torch.where(lower, c[..., q_pos, None] - c[..., None, :], 0.0)
    if r is not None:
        out = out + torch.where(lower, 0.0, r[..., None, :] - r[..., q_pos, None])
    return out


def dense_attention(q: Tensor, k: Tensor, v: Tensor, **inputs) -> Tensor:
    """:func:`materialised_attention` of q, k, v and the keywords of :func:`xforget.ops.backend.unchecked_call`."""
    return materialised_attention(unchecked_call(q, k, v, **inputs))


def materialised_attention(call: AttentionCall) -> Tensor:
    """softmax(softclamp(q k^T * scale + D + bias) + masks) v with optional dropout on the weights.

    Serves every call, also more queries than keys when bidirectional (cross-attention
    to a short context) and q, k, v in different dtypes (it runs before any autocast cast).
    ``call.memory`` (mem_k, mem_v), each (b, h_kv, m, d), is prepended unmasked with
    bias 0; ``call.softclamp`` c > 0 or None; ``call.dropout`` the probability of
    zeroing an attention weight (inverted dropout). Returns (b, h, n_q, d) in q's dtype.
    """
    s, q = call.shapes, call.q
    b, h, n_q, n_k = s.b, s.h, s.n_q, s.n_k
    ct = compute_dtype(q.dtype)
    k, v = expand_kv(call.k, h).to(ct), expand_kv(call.v, h).to(ct)
    logits = _scaled(q.to(ct) @ k.transpose(-1, -2), call)
    dec = decay_bias(call)
    if dec is not None:
        logits = logits + dec.to(ct)
    if call.bias is not None:
        logits = logits + call.bias.to(ct)

    k_pos = torch.arange(n_k, device=q.device)
    if call.causal:
        allowed = k_pos[None, :] <= k_pos[s.offset :, None]
    else:
        allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device)
    allowed = allowed[None, None]
    docs = call.document_mask(k_pos[s.offset:], k_pos)
    if docs is not None:  # packed documents: block-diagonal; memory keys below stay visible to every document
        allowed = allowed & docs
    if call.mask is not None:
        allowed = allowed & call.mask[:, None, None, :]
    if call.memory is not None:
        mk, mv = (expand_kv(t, h).to(ct) for t in call.memory)
        logits = torch.cat((_scaled(q.to(ct) @ mk.transpose(-1, -2), call), logits), dim=-1)
        v = torch.cat((mv, v), dim=2)
        allowed = F.pad(allowed.expand(b, h, n_q, n_k), (mk.shape[2], 0), value=True)
    if call.softclamp is not None:
        logits = torch.tanh(logits / call.softclamp) * call.softclamp

    allowed = allowed.expand(logits.shape)
    row_ok = allowed.any(-1, keepdim=True)
    logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~row_ok, 0.0)
    p = logits.softmax(-1).masked_fill(~row_ok, 0.0)
    if call.dropout > 0:
        p = F.dropout(p, call.dropout, training=True)
    return (p @ v).to(q.dtype)


def _scaled(logits: Tensor, call: AttentionCall) -> Tensor:
    """``logits * scale``; the default scale divides by sqrt(d), which rounds as this path always has."""
    root = math.sqrt(call.shapes.d)
    return logits / root if call.scale == 1.0 / root else logits * call.scale
