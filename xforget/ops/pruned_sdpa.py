"""Banded causal SDPA over folded q/k/v: each (batch, head) row keeps a window of keys.

Used by the fold backend when adaptive computation pruning (``prune.py``)
finds keys to skip.  Queries are cut into blocks of ``B``; block ``t`` of row
``r`` (key positions ``[p0, p0 + B)``, ``p0 = offset + t * B``) attends to

the window of keys ``[p0 - W_r, p0 + B)`` with a lower-right causal mask,
where ``W_r`` (a multiple of B) is the widest lookback that any block of the
row needs after pruning.  All blocks of a run of rows with the same window are
one fused CPU flash-attention call (the key windows are overlapping strided
views, no copy; the (B, W_r + B) mask is shared by every block).  Keeping a few keys more than the pruning allows only makes
the result closer to unpruned attention.  Keys before position 0 in the
first blocks (and the last, partial block) are handled as single-block calls
with their windows clipped at position 0.  Rows whose windows would be wide get
a larger block (at most 4 blocks per window), and rows where pruning would
skip less than ``MIN_SKIP`` of the work run unpruned.

The backward calls the fused backward on the same windows and accumulates the
overlapping window gradients phase by phase into fp32 buffers.  Rows that
prune nothing with ``n_q < n_k`` are split into a rectangle and a causal
square, merged exactly with their log-sum-exps (the backward passes the merged
output and log-sum-exp to each part: the split-softmax identity behind ring
attention).  Saved for the
backward: q/k/v, the output and one log-sum-exp per query: O(n)
memory, no mask is materialised.  Rows that prune nothing run as one
``is_causal`` call when ``n_q == n_k``.

CPU only (``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``).  The autograd
wrapper is the custom operator of :mod:`xforget.ops.pruned_op` (so ``torch.compile`` traces it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch

from xforget.ops.common import Tensor

_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

# at most this many key-window elements (rows * blocks * W * width) per fused call
CALL_ELEMENTS = 1 << 24


MIN_SKIP = 0.25  # rows skipping less than this fraction of their pairs run as one dense call
MAX_PHASES = 4  # window / block at most this (bigger windows get bigger blocks)


@dataclass(frozen=True)
class BandPlan:
    """How the rows are computed.

    Attributes:
        n_q, n_k: query and key counts (queries are the last n_q key positions).
        dense: runs (r0, r1) of rows computed without pruning.
        band: runs (r0, r1, B, W) of rows with query block B and key window W (a multiple of B).
    """

    n_q: int
    n_k: int
    dense: Tuple[Tuple[int, int], ...]
    band: Tuple[Tuple[int, int, int, int], ...]

    @property
    def offset(self) -> int:
        return self.n_k - self.n_q


def _row_plan(st: List[int], n_q: int, n_k: int, block: int) -> Tuple[int, int]:
    """(B, W) for one row from its per-block first kept keys; (0, 0) for dense."""
    offset = n_k - n_q
    need = max(offset + t * block - x for t, x in enumerate(st))
    b = block
    while -(-need // b) > MAX_PHASES:
        b *= 2
    phases = -(-max(need, 0) // b)
    phases = 1 << (phases - 1).bit_length() if phases > 0 else 0  # 0, 1, 2, 4: fewer distinct windows, fewer calls
    return b, phases * b


def skipped_pairs(b: int, w: int, n_q: int, n_k: int) -> float:
    """Causal query-key pairs a row with block b and window w skips."""
    if b == 0:
        return 0.0
    offset, skipped = n_k - n_q, 0.0
    for m0 in range(0, n_q, b):
        skipped += max(0, offset + m0 - w) * min(b, n_q - m0)
    return skipped


def make_plan(starts: List[List[int]], n_q: int, n_k: int, block: int) -> Tuple[BandPlan, List[float], float]:
    """Plan from the first kept key of each block of ``block`` queries, per row.

    Returns the plan, the skipped causal pairs per row and the total pairs of a row.
    """
    offset = n_k - n_q
    total = float(n_q * (offset + 1) + n_q * (n_q - 1) // 2)
    rows: List[Tuple[int, int]] = []
    skipped: List[float] = []
    for st in starts:
        b, w = _row_plan(st, n_q, n_k, block)
        sk = skipped_pairs(b, w, n_q, n_k)
        if sk < MIN_SKIP * total or b >= n_q:
            b, w, sk = 0, 0, 0.0
        rows.append((b, w))
        skipped.append(sk)
    dense, band = [], []
    r0 = 0
    for r in range(1, len(rows) + 1):
        if r == len(rows) or rows[r] != rows[r0]:
            b, w = rows[r0]
            (dense.append((r0, r)) if b == 0 else band.append((r0, r, b, w)))
            r0 = r
    return BandPlan(n_q, n_k, tuple(dense), tuple(band)), skipped, total


def _windows(x: Tensor, r0: int, r1: int, first: int, nb: int, size: int, step: int) -> Tensor:
    """Views x[0, r, first + t*step : first + t*step + size] for t < nb -> (rows, nb, size, width)."""
    s = x.stride()
    return x.as_strided((r1 - r0, nb, size, x.shape[-1]), (s[1], step * s[2], s[2], s[3]),
                        x.storage_offset() + r0 * s[1] + first * s[2])


def _segments(plan: BandPlan, rows: int, b: int, w: int, width: int) -> List[Tuple[int, int, int, int]]:
    """(m0, nb, qs, win) groups of query blocks, each one fused call.

    ``nb`` blocks of ``qs`` queries from query ``m0`` (stride b), each attending to
    the ``win`` keys before its first query and its own ``qs`` keys.  The first
    blocks, whose window would start before key 0, are one causal call over the
    prefix (``n_q == n_k``; ``win`` = 0) or one call each (``n_q < n_k``, window
    clipped at key 0); a partial last block is a call of its own.
    """
    off, n_q = plan.offset, plan.n_q
    full = n_q // b
    segs: List[Tuple[int, int, int, int]] = []
    t_lo = min(full, max(0, -(-(w - off) // b)))  # first block whose window starts at key >= 0
    if off == 0 and t_lo > 0:
        segs.append((0, 1, t_lo * b, 0))
    else:
        for t in range(t_lo):
            segs.append((t * b, 1, b, min(w, off + t * b)))
    per_block = max(1, rows * (w + b) * width)
    step = max(1, CALL_ELEMENTS // per_block)
    for t0 in range(t_lo, full, step):
        segs.append((t0 * b, min(step, full - t0), b, w))
    if n_q % b:
        m0 = full * b
        segs.append((m0, 1, n_q - m0, min(w, off + m0)))
    return segs


def _band_mask(b: int, w: int, dtype: torch.dtype, device) -> Tensor:
    """(b, w + b) additive mask: query i sees window keys j <= w + i (lower-right causal).

    Its sub-block ``[:qs, w - win: w + qs]`` is the lower-right causal mask of a
    ``qs`` x ``(win + qs)`` window, so edge blocks slice it instead of building their own.
    """
    return torch.full((b, w + b), float("-inf"), dtype=dtype, device=device).triu(w + 1)


def banded_forward(q: Tensor, k: Tensor, v: Tensor, plan: BandPlan, scale: float) -> Tuple[Tensor, Tensor]:
    """softmax(q k^T * scale, causal lower-right, keys limited per row by ``plan``) v.

    q (1, R, n_q, w), k/v (1, R, n_k, w), one dtype.  Block t of a band row attends to the window
    ``[p0 - W, p0 + B)`` with one shared lower-right causal mask; all blocks of a run of rows are
    one fused call.  Returns ``(out (1, R, n_q, w_v), lse (1, R, n_q) >= fp32)``; the autograd and
    ``torch.compile`` wrapper is :mod:`xforget.ops.pruned_op`.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    R = q.shape[1]
    out = q.new_empty(1, R, plan.n_q, v.shape[-1])
    lse = torch.empty(1, R, plan.n_q, dtype=acc, device=q.device)
    off = plan.offset
    masks = {}
    for r0, r1 in plan.dense:
        o, l = _dense_forward(q[:, r0:r1], k[:, r0:r1], v[:, r0:r1], off, scale)
        out[:, r0:r1] = o
        lse[:, r0:r1] = l
    for r0, r1, b, w in plan.band:
        mask = masks.setdefault((b, w), _band_mask(b, w, q.dtype, q.device))
        for m0, nb, qs, win in _segments(plan, r1 - r0, b, w, q.shape[-1]):
            p0 = off + m0
            o, l = _FWD(
                _windows(q, r0, r1, m0, nb, qs, b), _windows(k, r0, r1, p0 - win, nb, win + qs, b),
                _windows(v, r0, r1, p0 - win, nb, win + qs, b), 0.0, win == 0,
                attn_mask=None if win == 0 else mask[None, None, :qs, w - win: w + qs], scale=scale,
            )
            _windows(out, r0, r1, m0, nb, qs, b).copy_(o)
            lse[0, r0:r1, m0: m0 + nb * qs] = l.reshape(r1 - r0, nb * qs)
    return out, lse


def banded_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, plan: BandPlan,
                    scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The gradients of :func:`banded_forward` from its saved output and lse: ``(dq, dk, dv)`` in the inputs' dtypes."""
    acc = torch.promote_types(q.dtype, torch.float32)
    go = grad_out.to(q.dtype).contiguous()
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc, device=k.device)
    dv = torch.zeros(v.shape, dtype=acc, device=v.device)
    off = plan.offset
    masks = {}
    for r0, r1 in plan.dense:
        rs = slice(r0, r1)
        grads = _dense_backward(go[:, rs], q[:, rs], k[:, rs], v[:, rs], out[:, rs], lse[:, rs], off, scale)
        for buf, g in zip((dq, dk, dv), grads):
            buf[:, rs] += g
    for r0, r1, b, w in plan.band:
        rows = r1 - r0
        lse_rows = lse[0, r0:r1]
        mask = masks.setdefault((b, w), _band_mask(b, w, q.dtype, q.device))
        for m0, nb, qs, win in _segments(plan, rows, b, w, q.shape[-1]):
            p0 = off + m0
            qv, gov, ov = (_windows(x, r0, r1, m0, nb, qs, b) for x in (q, go, out))
            lv = lse_rows.as_strided((rows, nb, qs), (lse_rows.stride(0), b, 1), lse_rows.storage_offset() + m0)
            kw, vw = (_windows(x, r0, r1, p0 - win, nb, win + qs, b) for x in (k, v))
            gq, gk, gv = _BWD(gov, qv, kw, vw, ov, lv, 0.0, win == 0,
                              attn_mask=None if win == 0 else mask[None, None, :qs, w - win: w + qs], scale=scale)
            _windows(dq, r0, r1, m0, nb, qs, b).add_(gq)
            if nb == 1:
                _windows(dk, r0, r1, p0 - win, 1, win + qs, b).add_(gk)
                _windows(dv, r0, r1, p0 - win, 1, win + qs, b).add_(gv)
                continue
            for p in range(win // b + 1):  # overlapping windows: phase by phase, each phase's tiles are disjoint
                _windows(dk, r0, r1, p0 - win + p * b, nb, b, b).add_(gk[:, :, p * b:(p + 1) * b])
                _windows(dv, r0, r1, p0 - win + p * b, nb, b, b).add_(gv[:, :, p * b:(p + 1) * b])
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _dense_forward(q: Tensor, k: Tensor, v: Tensor, offset: int, scale: float) -> Tuple[Tensor, Tensor]:
    """Unpruned causal rows: one fused call (offset 0), else rectangle [0, offset) + diagonal."""
    if offset == 0:
        return _FWD(q, k, v, 0.0, True, scale=scale)
    od, ld = _FWD(q, k[:, :, offset:], v[:, :, offset:], 0.0, True, scale=scale)
    orr, lr = _FWD(q, k[:, :, :offset], v[:, :, :offset], 0.0, False, scale=scale)
    acc = ld.dtype
    a = torch.sigmoid(ld - lr)[..., None]
    o = torch.lerp(orr.to(acc), od.to(acc), a).to(q.dtype)
    return o, torch.logaddexp(ld, lr)


def _dense_backward(go, q, k, v, out, lse, offset: int, scale: float):
    if offset == 0:
        return _BWD(go, q, k, v, out, lse, 0.0, True, scale=scale)
    gq1, gk1, gv1 = _BWD(go, q, k[:, :, offset:], v[:, :, offset:], out, lse, 0.0, True, scale=scale)
    gq2, gk2, gv2 = _BWD(go, q, k[:, :, :offset], v[:, :, :offset], out, lse, 0.0, False, scale=scale)
    return gq1 + gq2, torch.cat([gk2, gk1], dim=2), torch.cat([gv2, gv1], dim=2)
