"""Block-sparse causal SDPA over folded q/k/v: each query block skips a key prefix.

Used by the fold backend when adaptive computation pruning (``prune.py``)
finds a skippable prefix.  For query block ``[m0, m1)`` (key positions
``[p0, p1) = [offset + m0, offset + m1)``) of one (batch, head) row with first
kept key ``s``, the block's attention is two fused CPU flash-attention calls:

* the diagonal tile: queries vs keys ``[p0, p1)`` with ``is_causal`` (square);
* the rectangle: queries vs keys ``[s, p0)``, nothing masked;

merged exactly with their log-sum-exps.  The backward calls the fused
backward of each part with the *merged* output and log-sum-exp, which gives
the exact gradients of the merged softmax (the split-softmax identity used by
ring attention), accumulating into fp32 buffers.  No mask is materialised and
only q/k/v, the output and one fp32 log-sum-exp per row are kept for the
backward: memory stays O(n).

Rows (batch x head) that prune nothing in any block run as one ``is_causal``
call when ``n_q == n_k``.

CPU only (``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``).
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from .common import Tensor

_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

# (r0, r1, m0, m1, k0, k1, causal): rows [r0, r1), queries [m0, m1), keys [k0, k1)
Part = Tuple[int, int, int, int, int, int, bool]


def plan_parts(starts: List[List[int]], n_q: int, n_k: int, block: int) -> Tuple[List[Part], List[List[Part]]]:
    """Split the work into fused calls.

    starts: per row, the first kept key of each query block.  Returns
    ``(singles, merged)``: ``singles`` are parts that alone make up their rows'
    output (dense rows with ``n_q == n_k``: one causal call); each entry of
    ``merged`` is a (rectangle, diagonal) pair or a lone diagonal for one
    run of rows and one query block.
    """
    offset = n_k - n_q
    rows = len(starts)
    singles: List[Part] = []
    merged: List[List[Part]] = []
    dense = [all(x == 0 for x in st) for st in starts]

    def runs(keys: List):
        """Maximal runs of consecutive rows with equal key (row index ranges)."""
        out, r0 = [], 0
        for r in range(1, rows + 1):
            if r == rows or keys[r] != keys[r0]:
                out.append((r0, r, keys[r0]))
                r0 = r
        return out

    if offset == 0:
        for r0, r1, is_dense in runs(dense):
            if is_dense:
                singles.append((r0, r1, 0, n_q, 0, n_k, True))
    nb = len(starts[0]) if rows else 0
    for t in range(nb):
        m0, m1 = t * block, min((t + 1) * block, n_q)
        p0 = offset + m0
        keys = [None if (dense[r] and offset == 0) else starts[r][t] for r in range(rows)]
        for r0, r1, st in runs(keys):
            if st is None:
                continue
            diag: Part = (r0, r1, m0, m1, p0, offset + m1, True)
            merged.append([(r0, r1, m0, m1, st, p0, False), diag] if st < p0 else [diag])
    return singles, merged


def _view(x: Tensor, part: Part, which: str) -> Tensor:
    r0, r1, m0, m1, k0, k1, _ = part
    return x[:, r0:r1, m0:m1] if which == "q" else x[:, r0:r1, k0:k1]


class PrunedCausalSDPA(torch.autograd.Function):
    """softmax(q k^T * scale, causal lower-right, skipping planned prefixes) v.

    q (1, R, n_q, w), k/v (1, R, n_k, w) in one dtype; returns (1, R, n_q, w_v).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, singles, merged, scale: float):  # type: ignore[override]
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        acc = torch.promote_types(q.dtype, torch.float32)
        lse = torch.empty(q.shape[:-1], dtype=acc, device=q.device)
        for part in singles:
            o, l = _FWD(_view(q, part, "q"), _view(k, part, "k"), _view(v, part, "k"), 0.0, True, scale=scale)
            r0, r1, m0, m1 = part[:4]
            out[:, r0:r1, m0:m1] = o
            lse[:, r0:r1, m0:m1] = l
        for parts in merged:
            r0, r1, m0, m1 = parts[0][:4]
            res = [_FWD(_view(q, p, "q"), _view(k, p, "k"), _view(v, p, "k"), 0.0, p[6], scale=scale) for p in parts]
            if len(res) == 1:
                o, l = res[0]
            else:
                (o1, l1), (o2, l2) = res
                l = torch.logaddexp(l1.to(acc), l2.to(acc))
                o = (torch.exp(l1 - l)[..., None] * o1.to(acc) + torch.exp(l2 - l)[..., None] * o2.to(acc)).to(q.dtype)
            out[:, r0:r1, m0:m1] = o
            lse[:, r0:r1, m0:m1] = l
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = (singles, merged, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        singles, merged, scale = ctx.plan
        grad_out = grad_out.to(q.dtype).contiguous()
        acc = torch.promote_types(q.dtype, torch.float32)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        parts = list(singles) + [p for ps in merged for p in ps]
        for p in parts:
            gq, gk, gv = _BWD(
                _view(grad_out, p, "q"), _view(q, p, "q"), _view(k, p, "k"), _view(v, p, "k"),
                _view(out, p, "q"), _view(lse, p, "q"), 0.0, p[6], scale=scale,
            )
            _view(dq, p, "q").add_(gq)
            _view(dk, p, "k").add_(gk)
            _view(dv, p, "k").add_(gv)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None
