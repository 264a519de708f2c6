"""Adaptive computation pruning of forgetting attention (DESIGN.md section 3.1).

Lin, Obando-Ceron, He, Courville, "Adaptive Computation Pruning for the
Forgetting Transformer", COLM 2025, arXiv 2504.06949: skip the query x key
work whose attention weight the forget gate has provably made negligible.

The safe bound (our derivation, the same idea as the paper's threshold)
-----------------------------------------------------------------------
Logit of query i and key j <= i: ``l_ij = s_ij + D_ij`` with
``s_ij = scale * q_i . k_j`` and ``D_ij = c_i - c_j`` (``c = cumsum(log f)``,
non-increasing).  Let ``r(i)`` be the row's *reference key*: the last real key
at or before i (i itself without padding).  Pad keys do not forget, so
``D_i,r(i) = 0`` and ``l_i,r(i) = s_i,r(i)``.  For a query block starting at
``i0`` and a key prefix ``[0, s)`` with ``s <= i0``:

    l_ij - l_i,r(i) <= (c_i0 - c_(s-1)) + scale * Q * (Kpre + Kref) =: g

with ``Q = max |q_i|`` over the block, ``Kpre = max |k_j|`` over the real keys
of the prefix and ``Kref`` a bound on ``|k_r(i)|`` (max over the block's own
keys without padding, over all real keys with padding).  If
``g <= log(eps) - log(n_k)`` every pruned weight is below ``eps / n_k`` times
the reference key's weight, so the pruned *normalised* mass of a row is below
``eps`` (fewer than n_k keys are pruned).  Renormalising over the kept keys
then changes each output channel by at most ``eps * (max v - min v)`` over
the pruned and kept values, i.e. ``<= 2 * eps * max|v|``; the reference key is
never pruned (``g >= 0`` there), so no row loses all its keys.  Gradients:
every term of the backward that involves a pruned key carries its weight
``p_ij < eps / n_k``, and the kept keys' weights change by a factor within
``[1, 1 / (1 - eps)]``, so each gradient moves by ``O(eps)`` times the scale of
``|dO| * max|v|`` (tested against the unpruned op).

The default ``eps = 1e-6`` keeps fp32 outputs within 1e-5 of the unpruned op
whenever ``max|v| <= 5`` (and within ``2e-6 * max|v|`` in general).  The
pruning decision is discrete (made without gradients) and per
(batch, head, query block): heads that never forget prune nothing.  ALiBi is
the constant gate ``log f = -slope``, so the same rule yields its band.

Statistics: within :func:`collect_pruning` every pruned op call appends a
:class:`PruneRecord` (pruned fraction of the causal query-key pairs per head).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch

from xforget.ops.common import Shapes, Tensor

PRUNE_EPS = 1.0e-6  # pruned mass per row < eps (weights < eps / n_k of the reference key)
PRUNE_BLOCK = 128  # query rows per pruning decision (fold)
KEY_ALIGN = 64  # pruned key prefixes are multiples of this
# The fold prunes only from this many keys on: below it a skipped tile saves less than planning
# costs (trained FoX Pro, bf16 fwd+bwd, 1 thread: pruned/unpruned 1.06x at 256 keys, 0.88x at 512,
# 0.59x at 2048; with 2 threads 1.45x at 256 keys, which slowed the default training run).
PRUNE_MIN_KEYS = 4 * PRUNE_BLOCK


def check_eps(eps: float) -> float:
    """``eps`` as a float in (0, 1); ``ValueError`` otherwise."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"prune_eps must be a number in (0, 1), got {eps!r}") from None
    if not 0.0 < e < 1.0:
        raise ValueError(f"prune_eps must be in (0, 1) (pruned attention mass per row), got {eps!r}")
    return e


def threshold(eps: float, n_k: int) -> float:
    """``log(eps) - log(n_k)``: a tile is skipped when its logit gap bound is below this."""
    return math.log(eps) - math.log(max(n_k, 1))


def key_norms(k: Tensor, h: int, mask: Optional[Tensor], key_norm: Optional[Tensor] = None) -> Tensor:
    """L2 norms of the keys, (b, h, n_k) fp32, expanded to query heads; pad keys 0.

    ``key_norm`` (b, h_kv, n_k): precomputed norms (the KV cache keeps them).
    """
    with torch.no_grad():
        kn = key_norm.float() if key_norm is not None else k.detach().float().norm(dim=-1)
        b, h_kv, n = kn.shape
        if h_kv != h:
            kn = kn[:, :, None].expand(b, h_kv, h // h_kv, n).reshape(b, h, n)
        if mask is not None:
            kn = kn.masked_fill(~mask[:, None, :], 0.0)
        return kn


def block_starts(
    q: Tensor,
    kn: Tensor,
    c: Tensor,
    mask: Optional[Tensor],
    s: Shapes,
    scale: float,
    eps: float,
    block: int = PRUNE_BLOCK,
    align: int = KEY_ALIGN,
    floor: Optional[Tensor] = None,
) -> Tensor:
    """First kept key of every (batch, head, query block): (b, h, n_blocks) int64.

    q (b, h, n_q, d) (unscaled); kn (b, h, n_k) key norms from :func:`key_norms`;
    c (b, h, n_k) fp32 cumulative log gate (pads 0).  Query block t holds queries
    ``[t * block, (t + 1) * block)`` at key positions ``offset + ...``.  The
    start is a multiple of ``align`` and never exceeds the block's first query
    position (the bound of the module docstring holds for every skipped key).
    ``floor`` (broadcastable to (b, h, n_blocks)) int64: keys before it are not
    attended anyway (earlier packed documents; ``c`` then restarts there), so
    prefixes ending at or before it count as forgotten; None: no such keys.
    """
    with torch.no_grad():
        b, h, n_q = s.b, s.h, s.n_q
        nb = -(-n_q // block)
        qn = q.detach().float().norm(dim=-1)
        qn = torch.nn.functional.pad(qn, (0, nb * block - n_q)).view(b, h, nb, block).amax(-1)
        first = torch.arange(nb, device=q.device) * block + s.offset  # position of each block's first query
        c = c.detach().float()
        c_i0 = c[..., first]  # (b, h, nb)
        if mask is None:
            kq = torch.nn.functional.pad(kn[..., s.offset:], (0, nb * block - n_q))
            kref = kq.view(b, h, nb, block).amax(-1)
        else:
            kref = kn.amax(-1, keepdim=True).expand(b, h, nb)
        n_cand = s.n_k // align
        if n_cand == 0:
            return torch.zeros(b, h, nb, dtype=torch.long, device=q.device)
        ends = torch.arange(1, n_cand + 1, device=q.device) * align  # candidate starts s (prefix [0, s))
        c_end = c[..., ends - 1]  # (b, h, n_cand)
        kpre = kn.cummax(-1).values[..., ends - 1]
        gap = c_i0[..., :, None] - c_end[..., None, :] + scale * qn[..., :, None] * (kpre[..., None, :] + kref[..., :, None])
        ok = (gap <= threshold(eps, s.n_k)) & (ends[None, :] <= first[:, None])
        if floor is not None:
            ok = ok | (ends <= floor[..., None])
        return ok.long().cumprod(-1).sum(-1) * align


def decode_starts(
    q: Tensor, kn: Tensor, c: Tensor, mask: Optional[Tensor], s: Shapes, scale: float, eps: float, align: int = 16,
    floor: Optional[Tensor] = None,
) -> Tensor:
    """First kept key per (batch, head) for few queries (decoding): (b, h) int64.

    The same bound with the n_q queries as one block (see the module docstring); ``floor`` as in
    :func:`block_starts`.
    """
    return block_starts(q, kn, c, mask, s, scale, eps, block=max(s.n_q, 1), align=align, floor=floor)[..., 0]


def pruned_pairs(starts: Tensor, s: Shapes, block: int) -> tuple[Tensor, Tensor]:
    """(pruned, total) causal query-key pairs per (batch, head), float64."""
    nb = starts.shape[-1]
    sizes = torch.full((nb,), block, dtype=torch.float64, device=starts.device)
    sizes[-1] = s.n_q - block * (nb - 1)
    pruned = (starts.double() * sizes).sum(-1)
    pos = torch.arange(s.offset, s.n_k, dtype=torch.float64)
    total = float((pos + 1).sum())
    return pruned, torch.full_like(pruned, total)


# ----------------------------------------------------------------------------- statistics


@dataclass
class PruneRecord:
    """What one op call skipped.

    Attributes:
        label: the caller's label (e.g. a layer name) set by :meth:`PruneLog.label`, or "".
        backend: "fold", "decode" or "flex".
        pruned: (heads,) float64, skipped causal query-key pairs summed over the batch.
        total: (heads,) float64, all causal query-key pairs summed over the batch.
    """

    label: str
    backend: str
    pruned: Tensor
    total: Tensor

    @property
    def fraction(self) -> Tensor:
        """(heads,) pruned fraction of the causal attention pairs (FLOPs)."""
        return self.pruned / self.total.clamp_min(1.0)


class PruneLog:
    """Records collected by :func:`collect_pruning`."""

    def __init__(self) -> None:
        self.records: List[PruneRecord] = []
        self.current = ""

    def label(self, name: str) -> None:
        """Label the records of the following op calls (e.g. from a forward pre-hook)."""
        self.current = name

    def by_label(self) -> dict[str, Tensor]:
        """label -> (heads,) pruned fraction over all recorded calls with that label."""
        sums: dict[str, list] = {}
        for r in self.records:
            acc = sums.setdefault(r.label, [torch.zeros_like(r.pruned), torch.zeros_like(r.total)])
            acc[0] = acc[0] + r.pruned
            acc[1] = acc[1] + r.total
        return {k: p / t.clamp_min(1.0) for k, (p, t) in sums.items()}


_LOG: ContextVar[Optional[PruneLog]] = ContextVar("xforget_prune_log", default=None)


@contextmanager
def collect_pruning() -> Iterator[PruneLog]:
    """Collect a :class:`PruneRecord` for every pruning-enabled op call inside the block.

    >>> with collect_pruning() as log:
    ...     model(tokens)
    >>> log.by_label()
    """
    log = PruneLog()
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


def current_log() -> Optional[PruneLog]:
    return _LOG.get()


def record(backend: str, pruned: Tensor, total: Tensor) -> None:
    """Append per-(batch, head) counts, summed over the batch, to the active log (if any)."""
    log = _LOG.get()
    if log is not None:
        log.records.append(PruneRecord(log.current, backend, pruned.sum(0).cpu(), total.sum(0).cpu()))
