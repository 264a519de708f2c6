"""Keeping the fold's fp32 error independent of the length and of |c| (issue 22).

The fold (:mod:`xforget.ops.fold`, DESIGN.md section 3) drops the row constant
``c_i`` and feeds each key's ``u_j = -c_j`` to the fused kernel, which forms the
logit ``s_ij + u_j`` in fp32.  That sum is rounded at the magnitude of ``u_j``,
which grows linearly with the position (ALiBi: ``slope * j``; FoX: up to
``|c| ~ 4e4`` at 16k tokens), although only ``c_i - c_j``, small for the keys
that carry weight, matters.  Measured before: ALiBi (8 heads) through the fold
4.2e-5 off float64 at 2048 tokens (the dense bias 3.8e-7), FoX 1.2e-3 at
|c| ~ 1e4.

The remedy (CPU fp32; CUDA and half-precision kernels keep the split key
channel of the fold): ``c`` is cumulated in float64 and split into
``hi = fl32(x)`` and ``lo = fl32(x - hi)``; queries get ``[1, c_hi_i, 1, c_lo_i]``
in front, keys ``[-c_hi_j, 1, -c_lo_j, 1]``.  A kernel that sums ``q . k`` in
channel order forms ``c_hi_i - c_hi_j`` first (exact, Sterbenz, for every key
within a factor two of the query's decay), then the small parts, then
``q . k``: the logit is rounded at its own size.  One fused call, as before.
Gradients reach ``c`` through the ``hi`` channels (``x_lo = x - x_hi`` has
derivative 0).

No kernel specifies its summation order.  PyTorch 2.13's CPU flash kernel sums
in order on key tiles whose length is a multiple of 16; a last tile of a few
keys (measured: 2-11 keys past a multiple of 512, for example 514-523, 1030 or
2050 keys, or 130) is summed otherwise, and its logits are then rounded at the
magnitude of |c| as with one key channel (measured with ALiBi slopes up to 10:
5e-5 .. 2.4e-4 off float64 instead of 4e-7).  So the fold pads queries and keys
at the end to a multiple of :data:`KEY_TILE` (:func:`tail_padding`): the pad
keys come after every real query, so causality hides them, the pad queries'
outputs are dropped and get no gradient.  The pruned bands then read whole
tiles (their key ranges start on multiples of 64 and end at a block end), and
packed documents take the same calls (the boundary is a jump in ``c``,
:func:`xforget.ops.documents.boundary_forget`).  Every length of 16 .. 3072
keys was checked; ``tests/test_fold_precision.py`` covers the awkward ones,
each path, gradients and query chunks.
An earlier version rebased the channel per block of queries (robust to the
order, slower: the keys are copied per block); it is not kept.
"""

from __future__ import annotations

ENABLED = True  # benchmarks compare with the single-channel fold in the same run by turning this off
KEY_TILE = 16  # the CPU kernel sums the channels in order on key tiles of this many keys


def tail_padding(n: int) -> int:
    """Positions to append to a row of ``n`` queries and keys so that every key tile is whole (0 .. 15)."""
    return -n % KEY_TILE



def exact_channels() -> bool:
    """Whether the CPU fp32 fold carries the row constant as query channels (:mod:`xforget.ops.fold`)."""
    return ENABLED
