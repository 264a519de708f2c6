"""Packed documents: attention that never crosses a document boundary (DESIGN.md section 7).

A packed row holds several documents back to back; ``document_ids`` (b, n_k)
int64, non-decreasing along each row, names the document of every key (the
queries are the last n_q keys).  Query i sees key j only when both carry the
same id: keys of other documents get exactly zero weight (they are masked with
-inf, or never computed), which is what running each document alone gives.

A boundary is a *total forget*.  The CPU fp32 fold with a decay writes it into
its float64 cumulative gate as a large jump (:func:`boundary_forget`): its exact
channels subtract ``c_i - c_j`` without losing digits, so packed rows run the
unpacked kernels.  Everywhere else a jump would cost fp32 digits in every later
logit as documents accumulate, so there:

* decays are cumulated per document (:func:`segmented_cumsum`, in float64 then
  rounded once), so ``|c|`` is bounded by one document's decay, whatever the
  number of documents before it;
* the boundary itself is a key-side range: every query's document starts at
  :func:`segment_starts`, keys before it are skipped (the fold's blocks start
  there, :func:`document_blocks_forward`) or masked as booleans (the materialised
  paths, :func:`same_document`).

Memory tokens (``TransformerWrapper(num_memory_tokens=M)``) in a packed row are the row's first
keys and carry the id :data:`MEMORY_DOCUMENT`; with ``memory=True`` (the attention call's
``document_memory``) every query sees them as if they sat directly in front of its own document:
:func:`same_document` lets every query see them, and :func:`segmented_cumsum` starts every
document's gate at the memory's end value.  Only the materialised paths implement this
(:func:`xforget.ops.dispatch.route` sends such calls to "dense").
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from xforget.ops.common import Shapes, Tensor

_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

DOC_BLOCK = 128  # query rows per fused call of the blocked document path

# The document id of memory tokens: the smallest int64, so the memory (the row's first keys) keeps the ids
# non-decreasing whatever the documents' ids are.
MEMORY_DOCUMENT = torch.iinfo(torch.int64).min


def check_document_ids(document_ids: Tensor, b: int, n: int) -> Tensor:
    """``document_ids`` as given, after the checks; ``ValueError`` naming the problem otherwise.

    Args:
        document_ids: (b, n) integer tensor, non-decreasing along each row.
    Raises:
        ValueError: not an integer tensor, wrong shape, or decreasing somewhere (while ``torch.compile``
            traces, a decreasing row is a ``RuntimeError`` from ``torch._assert_async`` when the graph runs).
    """
    if not isinstance(document_ids, Tensor):
        raise ValueError(f"document_ids must be a torch integer tensor (batch, n), int64 preferred; got a "
                         f"{type(document_ids).__module__}.{type(document_ids).__name__} (e.g. torch.as_tensor(ids))")
    if document_ids.is_floating_point() or document_ids.dtype == torch.bool:
        raise ValueError(f"document_ids must be an integer tensor (batch, n), int64 preferred; got {document_ids.dtype}")
    if tuple(document_ids.shape) != (b, n):
        raise ValueError(f"document_ids must have shape (batch, n) = {(b, n)}; got {tuple(document_ids.shape)}")
    if n > 1:
        ordered = (document_ids[:, 1:] >= document_ids[:, :-1]).all()
        if torch.compiler.is_compiling():  # a host read would break the graph: the check runs on the device
            torch._assert_async(ordered, "document_ids must be non-decreasing along each row")
        elif not bool(ordered):
            row, pos = (document_ids[:, 1:] < document_ids[:, :-1]).nonzero()[0].tolist()
            raise ValueError(f"document_ids must be non-decreasing along each row (documents are packed back to "
                             f"back); row {row} goes from {int(document_ids[row, pos])} at position {pos} to "
                             f"{int(document_ids[row, pos + 1])} at {pos + 1}")
    return document_ids


# The last document layout seen, per kind: (ids tensor, its version, result).  The wrapper passes one
# ids tensor to every layer, so each layer's backend reads the layout computed once per forward.
_LAYOUT: dict = {}


def _layout(kind: str, document_ids: Tensor, compute) -> Tensor:
    """``compute(document_ids)``, memoised for the same ids tensor (same object, unchanged since)."""
    if torch.compiler.is_compiling():
        return compute(document_ids)
    entry = _LAYOUT.get(kind)  # one read: a consistent (ids, version, result) triple
    if entry is not None and entry[0] is document_ids and entry[1] == document_ids._version:
        return entry[2]
    result = compute(document_ids)
    _LAYOUT[kind] = (document_ids, document_ids._version, result)
    return result


def segment_starts(document_ids: Tensor) -> Tensor:
    """(b, n) int64: the position of the first token of each position's document.

    Computed once per ids tensor (every layer of a forward passes the same one); treat it as read-only.
    """
    return _layout("starts", document_ids, _starts)


def _starts(document_ids: Tensor) -> Tensor:
    b, n = document_ids.shape
    idx = torch.arange(n, device=document_ids.device).expand(b, n)
    new = torch.ones_like(document_ids, dtype=torch.bool)
    new[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return torch.where(new, idx, 0).cummax(-1).values


def segment_ends(document_ids: Tensor) -> Tensor:
    """(b, n) int64: the position of the last token of each position's document (computed once per ids
    tensor, like :func:`segment_starts`)."""
    return _layout("ends", document_ids, lambda d: (d.shape[1] - 1) - _starts(d.flip(-1)).flip(-1))


def segmented_cumsum(g: Tensor, starts: Tensor, memory: Optional[Tensor] = None) -> Tensor:
    """Cumulative sum of ``g`` (b, h, n) restarting at every document start; ``g``'s dtype.

    Computed in float64 and rounded once, so a document's decay carries the
    rounding of its own length only (a cumsum over the whole row would carry
    ``6e-8 * |c|`` of every earlier document).  ``starts`` from :func:`segment_starts`.
    ``memory``: (b, n) bool memory-token keys (:func:`memory_keys`, their own segment at the
    row's start) or None: every document then restarts at the memory's end value instead of 0, so
    ``c_i - c_j`` from a memory key j to a query i sums the memory's gates after j and the
    document's up to i, as when the document runs alone behind the memory.
    """
    c = g.double().cumsum(-1)
    before = (starts - 1).clamp_min(0)[:, None, :].expand(c.shape)
    base = torch.where(starts[:, None, :] > 0, c.gather(-1, before), 0.0)
    out = c - base
    if memory is not None:
        mem = memory[:, None, :]
        total = torch.where(mem, g.double(), 0.0).sum(-1, keepdim=True)  # the memory's whole decay
        out = out + torch.where(mem, 0.0, total)
    return out.to(g.dtype)


def boundary_forget(document_ids: Tensor, q: Tensor, k: Tensor, scale: float, gap: float) -> Tensor:
    """(b, 1, n_k) float64: the cumulative decay of a *total forget* at every document start.

    ``-J * (documents started up to key j)``, with ``J = 2 * max|q| * max|k| * scale + gap`` per batch
    row (q (b, h, n_q, d), k (b, h_kv, n_k, d)): a key of an earlier document gets a logit at least
    ``gap`` below the query's own key, whatever ``q . k``, so ``exp`` gives it exactly 0.  Added to the
    fold's float64 ``c`` only where the fold carries the row constant as exact channels
    (:mod:`xforget.ops.rebase`): there the jumps cost no digits however many documents precede a key
    (the channels subtract ``c_i - c_j`` exactly), so packed rows take the unpacked path, one fused call
    or the pruned bands, and the pruning skips earlier documents like strongly forgotten keys.
    """
    with torch.no_grad():
        qn = q.detach().float().norm(dim=-1).flatten(1).amax(-1)  # (b,)
        kn = k.detach().float().norm(dim=-1).flatten(1).amax(-1)
        jump = (2.0 * qn * kn * scale + gap).double()
        return (-jump[:, None] * _layout("started", document_ids, _documents_started))[:, None, :]


def _documents_started(document_ids: Tensor) -> Tensor:
    """(b, n) float64: how many document starts lie after key 0 up to each key."""
    started = torch.zeros(document_ids.shape, dtype=torch.float64, device=document_ids.device)
    started[:, 1:] = (document_ids[:, 1:] != document_ids[:, :-1]).double().cumsum(-1)
    return started


def memory_keys(document_ids: Tensor) -> Tensor:
    """(b, n) bool: the keys that are memory tokens (id :data:`MEMORY_DOCUMENT`)."""
    return document_ids == MEMORY_DOCUMENT


def same_document(document_ids: Tensor, q_pos: Tensor, k_pos: Tensor, memory: bool = False) -> Tensor:
    """(b, 1, m, n) bool: query at position ``q_pos`` (m,) and key at ``k_pos`` (n,) share a document
    (with ``memory``: or the key is a memory token, which every query sees)."""
    keys = document_ids[:, k_pos]
    same = document_ids[:, q_pos][:, None, :, None] == keys[:, None, None, :]
    return same | memory_keys(keys)[:, None, None, :] if memory else same


def document_rows(mask: Tensor, document_ids: Tensor, s: Shapes, causal: bool, memory: bool = False) -> Tensor:
    """(b, n_q) bool: does the query see at least one real key of its own document (with ``memory``: or
    a real memory token; they come first, so a causal query sees them all)?"""
    cm = mask.long().cumsum(-1)
    starts = segment_starts(document_ids)
    base = torch.where(starts > 0, cm.gather(-1, (starts - 1).clamp_min(0)), 0)
    upto = cm if causal else cm.gather(-1, segment_ends(document_ids))
    rows = upto - base > 0
    if memory:
        rows = rows | (mask & memory_keys(document_ids)).any(-1, keepdim=True)
    return rows[:, s.offset:]


def mask_matrix(document_ids: Tensor, s: Shapes, causal: bool) -> Tensor:
    """(b, 1, n_q, n_k) bool: same document (and key at or before the query when causal)."""
    k_pos = torch.arange(s.n_k, device=document_ids.device)
    q_pos = k_pos[s.offset:]
    allowed = same_document(document_ids, q_pos, k_pos)
    if causal:
        allowed = allowed & (k_pos[None, :] <= q_pos[:, None])
    return allowed


# ----------------------------------------------------------------------------- the blocked fold path


def block_key_starts(document_ids: Tensor, s: Shapes, block: int = DOC_BLOCK) -> Tensor:
    """(b, n_blocks) int64: first key of the document of each query block's first query."""
    first = torch.arange(0, s.n_q, block, device=document_ids.device) + s.offset
    return segment_starts(document_ids)[:, first]


def skipped_pairs(starts: List[List[int]], s: Shapes, block: int) -> List[float]:
    """Causal query-key pairs each batch row skips when block t reads keys from ``starts[row][t]`` on."""
    sizes = [min(block, s.n_q - m0) for m0 in range(0, s.n_q, block)]
    return [float(sum(lo * qs for lo, qs in zip(row, sizes))) for row in starts]


def _block_mask(document_ids: Tensor, row: int, p0: int, qs: int, lo: int, dtype) -> Optional[Tensor]:
    """Additive (1, 1, qs, p0 + qs - lo) mask of queries [p0, p0 + qs) over keys [lo, p0 + qs), or None
    when the plain lower-right causal mask is enough (one document and ``lo == p0``)."""
    hi = p0 + qs
    d = document_ids[row]
    if lo == p0 and bool(d[lo] == d[hi - 1]):
        return None
    k_pos = torch.arange(lo, hi, device=d.device)
    q_pos = torch.arange(p0, hi, device=d.device)
    ok = (k_pos[None, :] <= q_pos[:, None]) & (d[lo:hi][None, :] == d[p0:hi][:, None])
    return torch.zeros(ok.shape, dtype=dtype, device=d.device).masked_fill(~ok, float("-inf"))[None, None]


def document_blocks_forward(q: Tensor, k: Tensor, v: Tensor, document_ids: Tensor, starts: List[List[int]],
                            block: int) -> Tuple[Tensor, Tensor]:
    """Causal attention over folded q/k/v (scale already in q) where each query block of each batch row
    reads keys from its own first kept key: the start of its first query's document or later.

    q (b, h, n_q, w), k/v (b, h, n_k, w) on the CPU; ``starts`` (python lists, (b, n_blocks)).
    Keys of other documents inside a block's range are masked with -inf; keys before it are never
    computed.  Returns ``(out (b, h, n_q, w_v), lse (b, h, n_q) >= fp32)``: what the backward needs
    besides the inputs (O(n)).  The autograd and ``torch.compile`` wrapper is
    :mod:`xforget.ops.pruned_op` (``document_fold``).
    """
    b, h, n_q, _ = q.shape
    off = k.shape[2] - n_q
    out = q.new_empty(b, h, n_q, v.shape[-1])
    lse = torch.empty(b, h, n_q, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
    for r, row in enumerate(starts):
        for t, lo in enumerate(row):
            m0 = t * block
            qs = min(block, n_q - m0)
            hi = off + m0 + qs
            mask = _block_mask(document_ids, r, off + m0, qs, lo, q.dtype)
            o, l = _FWD(q[r:r + 1, :, m0:m0 + qs], k[r:r + 1, :, lo:hi], v[r:r + 1, :, lo:hi],
                        0.0, mask is None, attn_mask=mask, scale=1.0)
            out[r:r + 1, :, m0:m0 + qs] = o
            lse[r:r + 1, :, m0:m0 + qs] = l
    return out, lse


def document_blocks_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                             document_ids: Tensor, starts: List[List[int]], block: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The gradients of :func:`document_blocks_forward` (dq, dk, dv) in the inputs' dtypes (the block
    masks are rebuilt: O(block x document) each, cheaper to redo than to keep)."""
    go, acc = grad_out.to(q.dtype).contiguous(), torch.promote_types(q.dtype, torch.float32)
    dq = torch.empty(q.shape, dtype=acc, device=q.device)  # query blocks are disjoint: written once
    dk = torch.zeros(k.shape, dtype=acc, device=k.device)
    dv = torch.zeros(v.shape, dtype=acc, device=v.device)
    n_q = q.shape[2]
    off = k.shape[2] - n_q
    for r, row in enumerate(starts):
        for t, lo in enumerate(row):
            m0 = t * block
            qs = min(block, n_q - m0)
            hi = off + m0 + qs
            mask = _block_mask(document_ids, r, off + m0, qs, lo, q.dtype)
            qq = slice(m0, m0 + qs)
            gq, gk, gv = _BWD(go[r:r + 1, :, qq], q[r:r + 1, :, qq], k[r:r + 1, :, lo:hi], v[r:r + 1, :, lo:hi],
                              out[r:r + 1, :, qq], lse[r:r + 1, :, qq], 0.0, mask is None, attn_mask=mask,
                              scale=1.0)
            dq[r:r + 1, :, qq] = gq
            dk[r:r + 1, :, lo:hi] += gk
            dv[r:r + 1, :, lo:hi] += gv
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
