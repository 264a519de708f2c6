"""Fold backend: forgetting attention through one fused SDPA call (DESIGN.md section 3).

In the causal case ``c_i`` is constant along a row and softmax is
shift-invariant, so ``softmax(s_ij + c_i - c_j) = softmax(s_ij - c_j)``: the
n x n decay bias collapses to one number per key, ``u_j = -c_j``, which is
appended to the keys as extra channels while the queries get a matching
constant channel.  No n x n tensor is built (except the boolean lower-right
mask PyTorch materialises on CPU when ``1 < n_q < n_k``).

Precision (the naive single-channel fold in bf16 is off by ~0.6 once
|c| > 1000, because bf16 keeps 8 bits of c):

* q is pre-scaled in fp32 and SDPA is called with ``scale=1.0``, so the query
  channel is an exact constant (1, or a power of two for fp16).
* CPU fp32 (also half-precision CPU inputs, which run in fp32): four
  channels, the row constant included, summed first (see "Accuracy" below,
  :func:`_decay_first`); fp64 and CUDA fp32: one channel ``u``.
* bf16: three channels ``hi + mid + lo`` with ``hi = bf16(u)``,
  ``mid = bf16(u - hi)``, ``lo = bf16(u - hi - mid)``: 3 x 8 bits = the full
  24-bit fp32 mantissa, so the fp32 ``u`` is represented exactly and the fused
  kernel (fp32 accumulation) sees the same logits as an fp32 fold.
* fp16: the same three-way split of ``u / 2^p`` with the query channel ``2^p``
  (both exact), ``p`` chosen per (batch, head) so that ``|u| / 2^p <= 2^14``:
  nothing can overflow fp16's 65504 however large |c| grows.

Accuracy: one key channel u_j = -c_j puts the full decay into each logit, so
the kernel rounds it at ~6e-8 * max|c| (ALiBi, 8 heads: 4.2e-5 off float64 at
2048 tokens).  On the CPU in fp32 the fold cumulates c in float64 and adds the
row constant as query channels that the kernel sums before ``q . k``
(:mod:`xforget.ops.rebase`): the logit is rounded at its own size (ALiBi
7e-7, FoX at |c| ~ 2e4 1.5e-6).  The kernel keeps that order on whole 16-key
tiles only, so rows are padded at the end to a multiple of 16 positions
(:func:`xforget.ops.rebase.tail_padding`).  CUDA keeps the single call (the
bf16 split above).

CPU speed: with decay, many softmax weights fall in exp()'s subnormal range
(e^-87 .. e^-104), which x86 handles ~10x slower; the backward of the fused
kernel can slow down 3-4x.  ``torch.set_flush_denormal(True)`` at program
start (before the first parallel op, so OpenMP threads inherit it) removes
this; the op does not change that process-wide setting itself.

Padding: pad keys get ``log f = 0`` and ``u_j = -(2 max|u| + 1e4)``, i.e. a
logit at least 1e4 below every real key in the row, which ``exp`` maps to
exactly 0.  Rows with no real key are zeroed explicitly (their softmax runs
over pad keys only, so everything stays finite).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from xforget.ops import prune as acp
from xforget.ops import rebase as rebasing
from xforget.ops.backend import AttentionCall
from xforget.ops.common import Shapes, Tensor, cumulative_gate, expand_kv, kernel_dtype
from xforget.ops.documents import block_key_starts, boundary_forget, mask_matrix
from xforget.ops.pruned_op import document_fold, pruned_fold

# From this many keys the CPU fold runs packed documents block by block (skipping earlier documents);
# below it one fused call with the block-diagonal mask is faster.  scripts/bench_packing.py, default FoX
# model, 2-core EPYC, mean document 200 tokens, packed/unpacked training throughput: n=512 blocked 1.06,
# fused 0.83; n=1024 blocked 1.02, fused 0.72; n=256 blocked 0.96, fused 0.99.
DOC_BLOCKED_MIN_KEYS = 512  # (the fp32 fold with a decay takes neither: the total forget in c, boundary_forget)
PAD_GAP = 1.0e4  # pad keys sit this far (at least) below every real key's logit
FP16_CHANNEL_MAX = 2.0 ** 14  # |u| / 2^p stays below this in fp16 channels


def split_channels(u: Tensor, dtype: torch.dtype) -> Tuple[List[Tensor], Tensor]:
    """Represent the fp32 per-key logit ``u`` (b, h, n) in ``dtype`` channels.

    Returns ``(key_channels, query_value)``: ``sum(key_channels) * query_value == u``
    (exactly for fp32 ``u``), ``query_value`` is (b, h, 1) in fp32.
    """
    one = torch.ones_like(u[..., :1])
    if dtype in (torch.float32, torch.float64):
        return [u.to(dtype)], one
    if dtype == torch.bfloat16:
        q_val = one
        x = u.float()
    elif dtype == torch.float16:
        with torch.no_grad():
            amax = u.detach().abs().amax(-1, keepdim=True).float()
            p = torch.ceil(torch.log2(amax.clamp_min(1.0) / FP16_CHANNEL_MAX)).clamp(0, 15)
            q_val = torch.exp2(p)
        x = u.float() / q_val
    else:
        raise ValueError(f"fold backend supports float64, float32, bfloat16, float16; got {dtype}")
    hi = x.to(dtype)
    r1 = x - hi.float()
    mid = r1.to(dtype)
    lo = (r1 - mid.float()).to(dtype)
    return [hi, mid, lo], q_val


def per_key_logit(c: Optional[Tensor], mask: Optional[Tensor], s: Shapes, device) -> Tensor:
    """``u_j = -c_j`` (fp32, (b, h, n_k)), with pad keys pushed far below every real key."""
    u = -c if c is not None else torch.zeros(s.b, 1, s.n_k, device=device)
    u = u.expand(s.b, s.h, s.n_k)
    if mask is not None:
        with torch.no_grad():
            far = -(2.0 * u.detach().abs().amax(-1, keepdim=True) + PAD_GAP)
        u = torch.where(mask[:, None, :], u, far)
    return u


def causal_sdpa(q: Tensor, k: Tensor, v: Tensor, n_q: int, n_k: int, scale: Optional[float], **kw) -> Tensor:
    """SDPA with causal masking aligned lower-right (query m sits at m + n_k - n_q); returns q's dtype.

    Half-precision CPU inputs run in fp32 (:func:`kernel_dtype`: faster there).
    """
    work = kernel_dtype(q)
    if work != q.dtype:
        return _causal_sdpa(q.to(work), k.to(work), v.to(work), n_q, n_k, scale, **kw).to(q.dtype)
    return _causal_sdpa(q, k, v, n_q, n_k, scale, **kw)


def _causal_sdpa(q: Tensor, k: Tensor, v: Tensor, n_q: int, n_k: int, scale: Optional[float], **kw) -> Tensor:
    if n_q == n_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **kw)
    if n_q == 1:  # the last position sees every key
        return F.scaled_dot_product_attention(q, k, v, scale=scale, **kw)
    from torch.nn.attention.bias import causal_lower_right

    # CausalBias dispatch does not take enable_gqa: expand kv heads first.
    if kw.pop("enable_gqa", False):
        k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n_q, n_k), scale=scale, **kw)


def fold_attention(call: AttentionCall, *, channel_multiple: int = 1) -> Tensor:
    """Causal forgetting attention via the key-channel fold; returns q's dtype.

    ``channel_multiple`` rounds the folded head dim up (8 suits the CUDA kernels).
    ``call.prune``: adaptive computation pruning on CPU tensors with at least
    ``PRUNE_MIN_KEYS`` (512) keys (``prune.py``: per
    (batch, head, block of 128 queries) the key prefix whose weights are all
    below ``prune_eps / n_k`` of the row's reference key is skipped; the output
    moves by at most ``2 * prune_eps * max|v|``).  Nothing prunes without a
    forget gate or when the gate never gets small; then the op is one fused call.
    Under ``torch.compile`` the same pruning runs: the plan is made inside one
    custom operator (:mod:`xforget.ops.pruned_op`), so ``fullgraph=True`` traces
    the op with no graph break (docs/pruning.md, "Under torch.compile").
    Raises ``ValueError`` for ``causal=False`` (the bidirectional bias has two
    different row constants and does not fold: use "chunked").
    """
    call.require_causal("fold")
    s, scale, mask = call.shapes, call.scale, call.mask
    q, k, v = call.q, call.k, call.v

    exact = _exact(call)
    # exact: c in float64, not restarted per document (documents are kept apart by the key ranges and
    # masks; the channels make its differences exact however large |c| grows: xforget.ops.rebase)
    c = cumulative_gate(call.log_fgate, mask, s, torch.float64) if exact else call.forward_decay()
    # exact channels: a document boundary is a total forget inside c (documents.boundary_forget), so
    # packed rows run the unpacked kernels; elsewhere the boundary stays a key range or a mask
    forget_docs = exact and call.document_ids is not None
    if forget_docs:
        c = c + boundary_forget(call.document_ids, q, k, scale, PAD_GAP)
    if c is None and mask is None and call.document_ids is None:  # plain causal attention: nothing to fold
        return causal_sdpa(q, k, v, s.n_q, s.n_k, scale, enable_gqa=s.h != s.h_kv)

    dtype = kernel_dtype(q)  # half precision on the CPU runs in fp32 (faster there, one exact channel)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    u = per_key_logit(c, mask, s, q.device)
    q_s = (q.to(torch.promote_types(dtype, torch.float32)) * scale).to(dtype)
    if exact and c is not None:  # the row constant as query channels, summed first: rounded at the logit's size
        q_parts, k_parts = _decay_first(q_s, k, c, u, s)
        n_ch = 4
    else:
        k_chans, q_val = split_channels(u, dtype)
        n_ch = len(k_chans)
        # [q * scale, q_val...], [k, u channels...]
        q_parts = [q_s, q_val[..., None].to(dtype).expand(s.b, s.h, s.n_q, n_ch)]
        k_parts = [expand_kv(k, s.h)] + [ch[..., None] for ch in k_chans]
    width = max(s.d + n_ch, s.d_v)
    width = -(-width // channel_multiple) * channel_multiple

    # one copy per tensor, zero-padded to width; v: [v, 0...]
    pad_qk, pad_v = width - s.d - n_ch, width - s.d_v
    if pad_qk:
        q_parts.append(q_s.new_zeros(s.b, s.h, s.n_q, pad_qk))
        k_parts.append(q_s.new_zeros(s.b, s.h, s.n_k, pad_qk))
    q2, k2 = torch.cat(q_parts, dim=-1), torch.cat(k_parts, dim=-1)
    # the fused CPU/GPU kernels want equal head dims: pad v with zero channels
    v2 = F.pad(expand_kv(v, s.h), (0, pad_v)) if pad_v else expand_kv(v, s.h)

    # whole key tiles: the kernel sums the channels in order only there (xforget.ops.rebase)
    pad = rebasing.tail_padding(s.n_k) if exact and s.n_q > 1 else 0
    if pad:  # queries and keys at the end: causality hides the pad keys; the pad queries are dropped
        q2, k2, v2 = (F.pad(t, (0, 0, 0, pad)) for t in (q2, k2, v2))
    if call.document_ids is not None and not forget_docs:  # packed documents: blocks from their document's start
        out = _documents(call, q, k, c, q2, k2, v2)
    elif call.prune and c is not None and not q.is_cuda and s.n_k >= acp.PRUNE_MIN_KEYS:
        out = _pruned(q, k, c, mask, s, scale, call.prune_eps, call.key_norm, q2, k2, v2, width, pad)
    else:
        out = causal_sdpa(q2, k2, v2, s.n_q + pad, s.n_k + pad, 1.0)
    return call.finish(out[..., : s.n_q, : s.d_v])


def _exact(call: AttentionCall) -> bool:
    """Whether the fold carries the row constant as query channels: CPU, fp32 kernel, a forget gate."""
    return (rebasing.exact_channels() and call.log_fgate is not None and not call.q.is_cuda
            and kernel_dtype(call.q) == torch.float32)


def _decay_first(q_s: Tensor, k: Tensor, c: Tensor, u: Tensor, s: Shapes) -> Tuple[List[Tensor], List[Tensor]]:
    """The exact fold's channels (fp32, CPU): queries ``[1, c_hi_i, 1, c_lo_i, q * scale]``, keys
    ``[u_hi_j, 1, u_lo_j, 1, k]``, with ``c`` float64 (b, h, n_k), ``u`` its per-key logit (pads far)
    and ``x_hi = fl32(x)``, ``x_lo = fl32(x - x_hi)``.

    A kernel that sums the channels in order forms ``u_hi_j + c_hi_i`` first, exactly for every key
    within a factor two of the query's decay, then adds the small parts and ``q . k``: the logit
    ``s_ij + c_i - c_j`` is rounded at its own size, not at ``|c|`` (:mod:`xforget.ops.rebase`).
    The gradient reaches ``c`` through the ``hi`` channels (the ``lo`` parts are constants:
    ``x_lo = x - x_hi`` has derivative 0).
    """
    dt = q_s.dtype
    c_q = c[..., s.offset:]
    c_hi, u_hi = c_q.to(dt), u.to(dt)
    c_lo, u_lo = ((x.detach() - x_hi.detach().double()).to(dt) for x, x_hi in ((c_q, c_hi), (u, u_hi)))
    one_q, one_k = torch.ones_like(c_hi), torch.ones_like(u_hi)
    q_parts = [torch.stack((one_q, c_hi, one_q, c_lo), -1), q_s]
    k_parts = [torch.stack((u_hi, one_k, u_lo, one_k), -1), expand_kv(k, s.h)]
    return q_parts, k_parts


def _documents(call: AttentionCall, q: Tensor, k: Tensor, c: Optional[Tensor], q2: Tensor, k2: Tensor,
               v2: Tensor) -> Tensor:
    """The folded attention of packed documents (:mod:`xforget.ops.documents`), ``(b, h, n_q, width)``:
    the fold without the exact channels (no decay, float64, CUDA), so without tile padding either.

    On the CPU from ``PRUNE_MIN_KEYS`` keys: blocks of ``PRUNE_BLOCK`` queries per batch row, each
    reading keys from the start of its first query's document (and, with ``call.prune``, from the
    decay bound's first kept key when that is later); the skipped pairs are recorded like the
    pruned ones.  Shorter calls and CUDA tensors: one fused call with the block-diagonal causal
    mask as booleans (O(n_q n_k) bits).
    """
    s, docs = call.shapes, call.document_ids
    if q2.is_cuda or s.n_k < DOC_BLOCKED_MIN_KEYS:
        allowed = mask_matrix(docs, s, causal=True)
        if not q2.is_cuda:  # the CPU kernel takes an additive mask as is; a boolean one costs ~1.6x (measured)
            allowed = torch.zeros(allowed.shape, dtype=q2.dtype, device=q2.device).masked_fill(~allowed, float("-inf"))
        return F.scaled_dot_product_attention(q2, k2, v2, attn_mask=allowed, scale=1.0)
    starts = block_key_starts(docs, s, acp.PRUNE_BLOCK)  # (b, n_blocks)
    if call.prune and c is not None:
        kn = acp.key_norms(k, s.h, call.mask, call.key_norm)
        decay = acp.block_starts(q, kn, c, call.mask, s, call.scale, call.prune_eps, floor=starts[:, None, :])
        starts = torch.maximum(starts, decay.amin(1))  # the heads share one call: the earliest head's start
    out, _ = document_fold(q2.contiguous(), k2.contiguous(), v2.contiguous(), docs, starts, acp.PRUNE_BLOCK)
    return out


def _pruned(q, k, c, mask, s: Shapes, scale, prune_eps, key_norm, q2, k2, v2, width, pad: int) -> Tensor:
    """The banded pruned attention of the folded q2/k2/v2 (``(b, h, n_q + pad, width)``; ``pad``
    tile-padding positions at the end of q2/k2/v2 join the last query block: the block count is the same).

    The starts are tensor arithmetic and the banded kernels one custom operator
    (:mod:`xforget.ops.pruned_op`), so ``torch.compile`` traces this with no graph break and the
    compiled step skips the same tiles as eager mode.
    """
    kn = acp.key_norms(k, s.h, mask, key_norm)
    starts = acp.block_starts(q, kn, c, mask, s, scale, prune_eps)
    r, n_q, n_k = s.b * s.h, s.n_q + pad, s.n_k + pad
    out, _ = pruned_fold(q2.reshape(1, r, n_q, width), k2.reshape(1, r, n_k, width),
                         v2.reshape(1, r, n_k, width), starts.view(r, -1), acp.PRUNE_BLOCK, s.h)
    return out.reshape(s.b, s.h, n_q, width)
