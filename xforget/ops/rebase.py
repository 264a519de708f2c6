"""Keeping the fold's fp32 error independent of the length and of |c| (issue 22).

The fold (:mod:`xforget.ops.fold`, DESIGN.md section 3) drops the row constant
``c_i`` and feeds each key's ``u_j = -c_j`` to the fused kernel, which forms the
logit ``s_ij + u_j`` in fp32.  That sum is rounded at the magnitude of ``u_j``,
which grows linearly with the position (ALiBi: ``slope * j``; FoX: up to
``|c| ~ 4e4`` at 16k tokens), although only ``c_i - c_j``, small for the keys
that carry weight, matters.  Measured before: ALiBi (8 heads) through the fold
4.2e-5 off float64 at 2048 tokens (the dense bias 3.8e-7), FoX 1.2e-3 at
|c| ~ 1e4.  Two remedies, both CPU fp32 (CUDA and half-precision kernels keep
the single split channel of the fold):

1. **The row constant as query channels** (the default where it holds): ``c``
   is cumulated in float64 and split into ``hi = fl32(x)`` and
   ``lo = fl32(x - hi)``; queries get ``[1, c_hi_i, 1, c_lo_i]`` in front,
   keys ``[-c_hi_j, 1, -c_lo_j, 1]``.  A kernel that sums ``q . k`` in channel
   order forms ``c_hi_i - c_hi_j`` first (exact, Sterbenz, for every key within
   a factor two of the query's decay), then the small parts, then ``q . k``:
   the logit is rounded at its own size.  One fused call, as before.  Summation
   order is not specified by any kernel, so :func:`channels_in_order` measures
   it once per width (PyTorch 2.13's CPU flash kernel: in order).
2. **Rebasing per query block** (the fallback): a block of queries is computed
   with its keys' channel replaced by ``c_ref - c_j``, ``c_ref`` the decay at
   the block's middle query (softmax is shift-invariant per row), computed in
   fp32 as ``(hi_j - hi_ref) + (lo_j - lo_ref)``.  The values near each query
   are then O(decay over half a block); the block's keys are copied (into one
   reused buffer) with the channel rewritten.  Unpruned rows take the largest
   power-of-two block whose decay stays within :data:`REBASE_SPAN`.

Gradients: the ``hi`` channels carry them (``x_lo = x - x_hi`` has derivative
0); the per-block constant of the fallback gets none (each row of the softmax
Jacobian sums to zero).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from xforget.ops.common import Tensor

# Rows whose |c| stays below this are computed unrebased: fp32 rounds their channel by < 6e-8 * 16 = 1e-6.
REBASE_MIN_DECAY = 16.0
# Unpruned rows run in query blocks of at least this many queries, as long as the blocks' decay allows
REBASE_BLOCK = 128
# A block's reference sits in its middle: blocks grow (powers of two) while the decay across one stays
# below this, so the rebased values near each query stay below half of it (fp32: 6e-8 * 32 = 2e-6).
REBASE_SPAN = 64.0
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
        blocks: ``(b, h)`` int64 query block of the row's unpruned rebased calls (:func:`block_sizes`),
            0 for the rows whose ``|c|`` stays below :data:`REBASE_MIN_DECAY` (one fused call, unrebased).
    """

    slot: int
    hi: Tensor
    lo: Tensor
    key_lo: Tensor
    blocks: Tensor

    def flat(self) -> "Rebase":
        """The same with (batch, head) flattened to one row axis of ``(1, b * h, ...)``, as the banded kernel uses."""
        b, h, n = self.hi.shape
        return Rebase(self.slot, *(x.reshape(1, b * h, n) for x in (self.hi, self.lo, self.key_lo)),
                      self.blocks.reshape(1, b * h))


def block_sizes(u: Tensor, n_q: int) -> Tensor:
    """(b, h) int64 query block of each row's rebased unpruned calls; 0 for rows that need no rebase.

    ``u`` (b, h, n_k) float64 ``-c`` (non-decreasing).  The block is the largest power of two from
    :data:`REBASE_BLOCK` whose decay over any window of that many keys stays within :data:`REBASE_SPAN`
    (at least ``REBASE_BLOCK``): gentle heads take few large blocks, steep ones blocks of 128.
    """
    rows = u.abs().amax(-1) > REBASE_MIN_DECAY
    blocks = torch.full(rows.shape, REBASE_BLOCK, dtype=torch.long, device=u.device)
    size, n = 2 * REBASE_BLOCK, u.shape[-1]
    while size < 2 * n_q:
        span = (u[..., size:] - u[..., :-size]).amax(-1) if size < n else u[..., -1] - u[..., 0]
        blocks = torch.where(span <= REBASE_SPAN, torch.full_like(blocks, size), blocks)
        size *= 2
    return torch.where(rows, blocks, 0)


def make_rebase(c64: Tensor, mask: Optional[Tensor], slot: int, n_q: int) -> Optional[Rebase]:
    """The :class:`Rebase` of a float64 cumulative decay ``c64`` (b, h, n_k), or None when no row needs it.

    ``mask`` (b, n_k) bool, True = real key, or None; ``n_q`` the number of queries (the last keys).
    """
    if not ENABLED:
        return None
    with torch.no_grad():
        u = -c64.detach().double()
        blocks = block_sizes(u, n_q)
        # eager: skip the blocked path when no row needs it; compiled: no data-dependent branch here
        # (the blocked kernel runs eagerly and keeps its unflagged rows as one fused call)
        if not torch.compiler.is_compiling() and not bool((blocks > 0).any()):
            return None
        hi = u.float()
        lo = (u - hi.double()).float()
        key_lo = lo if mask is None else lo.masked_fill(~mask[:, None, :], 0.0)
    return Rebase(slot, hi, lo, key_lo, blocks)


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


# ----------------------------------------------------------------------------- the row constant as a channel

PROBE_DECAY = 30000.3  # |c| of the probe: an fp32 rounding at this magnitude is ~2e-3 per logit


@torch.compiler.disable  # the cached verdict is read eagerly (dynamo would trace through the cache)
@functools.lru_cache(maxsize=None)
def channels_in_order(width: int) -> bool:
    """Does the CPU fp32 fused kernel sum the first channels of ``q . k`` first, in order?

    The exact fold (:func:`xforget.ops.fold.fold_attention`) puts ``[1, c_hi_i, 1, c_lo_i]`` in front
    of the queries and ``[-c_hi_j, 1, -c_lo_j, 1]`` in front of the keys: summed in channel order the
    decay ``c_i - c_j`` is formed first, exactly (Sterbenz), and only then meets ``q . k``, so no
    rounding happens at the magnitude of ``|c|``.  Whether a kernel sums in that order is not
    specified, so it is measured once per folded width: a row with ``|c| = 30000.3`` on every key
    (no decay between keys) must give plain causal attention, output and gradients within 1e-5
    (summed out of order the logits are off by ~2e-3 and the check fails); otherwise the fold
    falls back to rebasing per query block (:class:`Rebase`).
    """
    return _probe(width, first=True)


def _probe(width: int, first: bool) -> bool:
    """The check of :func:`channels_in_order`; ``first=False`` puts the decay channels last (tests: it fails)."""
    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        return _probe_sizes(width, first)


def _probe_sizes(width: int, first: bool) -> bool:
    g = torch.Generator().manual_seed(0)
    d = width - 4
    for n in (64, 700):  # both sides of the CPU kernel's split sizes
        q, k, v = (torch.randn(1, 2, n, d, generator=g) * 0.5 for _ in range(3))
        c = torch.full((1, 2, n), -PROBE_DECAY, dtype=torch.float64)
        hi, lo = c.float(), (c - c.float().double()).float()
        one = torch.ones_like(hi)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        qc, kc = torch.stack((one, hi, one, lo), -1), torch.stack((-hi, one, -lo, one), -1)
        q2 = torch.cat((qc, leaves[0]) if first else (leaves[0], qc), -1)
        k2 = torch.cat((kc, leaves[1]) if first else (leaves[1], kc), -1)
        v2 = F.pad(leaves[2], (0, 4))
        out = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, scale=1.0)[..., :d]
        w = torch.randn(out.shape, generator=g)
        got = [out.detach(), *torch.autograd.grad((out * w).sum(), leaves)]
        plain = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = F.scaled_dot_product_attention(*plain, is_causal=True, scale=1.0)
        want = [ref.detach(), *torch.autograd.grad((ref * w).sum(), plain)]
        if any(float((a - b).abs().max()) > 1e-5 for a, b in zip(got, want)):
            return False
    return True
