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
in order on every key tile of 16 keys or more; a last tile of 2-15 keys (for
example 516, 520 or 1030 keys, or 130) is summed otherwise, and its logits are
then rounded at the magnitude of |c| as with one key channel (measured at
|c| = 3e4: 1e-5 .. 1.5e-3, the order of the error of before: no gain there, and
at most a few roundings at |c| instead of one).  Padding the keys to full tiles
would remove that case (not done).
An earlier version of this branch rebased the channel per block of queries
(robust to the order, slower: the keys are copied per block); it is not kept.
"""

from __future__ import annotations

ENABLED = True  # benchmarks compare with the single-channel fold in the same run by turning this off


def exact_channels() -> bool:
    """Whether the CPU fp32 fold carries the row constant as query channels (:mod:`xforget.ops.fold`)."""
    return ENABLED
