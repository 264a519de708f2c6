"""Rebasing the fold's decay channel per query block, so its fp32 error does not grow with the length.

The fold (:mod:`xforget.ops.fold`, DESIGN.md section 3) drops the row constant
``c_i`` and feeds each key's ``u_j = -c_j`` to the fused kernel, which forms the
logit ``s_ij + u_j`` in fp32.  That sum is rounded at the magnitude of ``u_j``,
which grows linearly with the position (ALiBi: ``slope * j``; FoX: up to
``|c| ~ 4e4`` at 16k tokens), although only ``c_i - c_j``, small for the keys
that carry weight, matters.  Measured before this module: ALiBi (8 heads)
through the fold 4.1e-5 off float64 at 2048 tokens, against 1.2e-6 for the
dense bias.

Softmax is shift-invariant per row, so any constant per query block may be
added to the channel.  A block of queries is computed with its keys' channel
replaced by ``c_ref - c_j``, ``c_ref`` the decay at the block's middle query:
for the keys near the block's queries the values are O(decay over half a
block), and the rounding is that of a small number.

Precision of the values themselves: ``c`` is cumulated in float64 and split
into ``hi = fl32(-c)`` (the channel the kernel reads, carrying the gradient)
and ``lo = fl32(-c - hi)``; the rebased channel is computed in fp32 as
``(hi_j - hi_ref) + (lo_j - lo_ref)``, whose first difference is exact
(Sterbenz) for every key within a factor two of the reference, so it equals
``c_ref - c_j`` to the rounding of the small result, however large ``|c|``.

Gradients: the rebased channel is the key channel plus a constant per block,
so its gradient is the key channel's; the constant gets none (each row of the
softmax Jacobian sums to zero).  Only the key channel is copied per block (the
window a block reads is cloned, its channel rewritten), O(block keys x width)
per call; rows whose decay never exceeds :data:`REBASE_MIN_DECAY` are left as
one fused call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from xforget.ops.common import Tensor

# Rows whose |c| stays below this are computed unrebased: fp32 rounds their channel by < 6e-8 * 8 = 5e-7.
REBASE_MIN_DECAY = 8.0
REBASE_BLOCK = 128  # queries per rebased call of unpruned rows (the reference is the block's middle query)
ENABLED = True  # benchmarks compare with the unrebased fold in the same run by turning this off


@dataclass(frozen=True)
class Rebase:
    """What a blocked fused call needs to rebase its keys' decay channel.

    Attributes:
        slot: index of the decay channel in the folded keys' last dimension.
        hi: ``(b, h, n_k)`` fp32 ``fl32(-c)`` at every position (pads included: the reference of a
            query on a pad position is its cumulative decay there).
        lo: ``(b, h, n_k)`` fp32 ``fl32(-c - hi)``, the part of ``-c`` that fp32 ``hi`` misses.
        key_lo: ``lo`` with pad keys 0 (their channel is the far value of :func:`per_key_logit`).
        rows: ``(b, h)`` bool, the rows whose ``|c|`` exceeds :data:`REBASE_MIN_DECAY`.
    """

    slot: int
    hi: Tensor
    lo: Tensor
    key_lo: Tensor
    rows: Tensor

    def flat(self) -> "Rebase":
        """The same with (batch, head) flattened to one row axis of ``(1, b * h, ...)``, as the banded kernel uses."""
        b, h, n = self.hi.shape
        return Rebase(self.slot, *(x.reshape(1, b * h, n) for x in (self.hi, self.lo, self.key_lo)),
                      self.rows.reshape(1, b * h))


def make_rebase(c64: Tensor, mask: Optional[Tensor], slot: int) -> Optional[Rebase]:
    """The :class:`Rebase` of a float64 cumulative decay ``c64`` (b, h, n_k), or None when no row needs it.

    ``mask`` (b, n_k) bool, True = real key, or None.
    """
    if not ENABLED:
        return None
    with torch.no_grad():
        u = -c64.detach().double()
        rows = u.abs().amax(-1) > REBASE_MIN_DECAY
        # eager: skip the blocked path when no row needs it; compiled: no data-dependent branch here
        # (the blocked kernel runs eagerly and keeps its unflagged rows as one fused call)
        if not torch.compiler.is_compiling() and not bool(rows.any()):
            return None
        hi = u.float()
        lo = (u - hi.double()).float()
        key_lo = lo if mask is None else lo.masked_fill(~mask[:, None, :], 0.0)
    return Rebase(slot, hi, lo, key_lo, rows)


def rebase_(keys: Tensor, key_lo: Tensor, ref_hi: Tensor, ref_lo: Tensor, slot: int) -> Tensor:
    """Rewrite the decay channel of a cloned key window in place; returns ``keys``.

    ``keys`` (..., L, width) a private copy of folded keys; ``key_lo`` (..., L) their ``lo`` parts;
    ``ref_hi``, ``ref_lo`` (...,) the reference's ``hi`` and ``lo`` (one per block).  The channel
    ``hi_j`` becomes ``(hi_j - hi_ref) + (lo_j - lo_ref)``, i.e. ``c_ref - c_j`` to fp32 rounding of
    the result.
    """
    ch = keys[..., slot]
    ch.sub_(ref_hi[..., None].to(keys.dtype)).add_((key_lo - ref_lo[..., None]).to(keys.dtype))
    return keys
