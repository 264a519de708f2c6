"""The pruned fold as one PyTorch operator, so that ``torch.compile`` keeps pruning (DESIGN.md 3.1).

The pruning plan is data-dependent Python: which key prefix each (row, query block) may skip
decides how many fused calls run and over which windows (:mod:`xforget.ops.pruned_sdpa`).
``torch.compile`` cannot trace that (``fullgraph=True`` fails on it), so the banded attention is
registered as a custom operator (``torch.library.custom_op``): the compiler sees one opaque
call with known output shapes (its fake implementation), the plan is made from the starts
tensor when the call runs, and the backward is a second operator on the saved tensors and the
same starts.  Eager mode and compiled graphs then run the very same kernels and skip the very
same tiles.

    out, lse = torch.ops.xforget.pruned_fold(q2, k2, v2, starts, block, heads)

``q2`` (1, R, n_q, w), ``k2`` / ``v2`` (1, R, n_k, w): the folded rows (one per batch x head),
one float dtype; ``starts`` (R, n_blocks) int64: first kept key of every block of ``block``
queries (:func:`xforget.ops.prune.block_starts`); ``heads``: rows per batch element (the log
counts per head).  Returns ``out`` (1, R, n_q, w) in q2's dtype
and ``lse`` (1, R, n_q) in >= fp32 (the log-sum-exp the backward needs; not differentiable).
Rows that would skip too little run unpruned (:func:`xforget.ops.pruned_sdpa.make_plan`).
Each call appends its skipped pairs to the active :func:`xforget.ops.prune.collect_pruning` log.
CPU tensors only (the fused CPU flash-attention kernels).
"""

from __future__ import annotations

from typing import Tuple

import torch

from xforget.ops import prune as acp
from xforget.ops.common import Tensor
from xforget.ops.pruned_sdpa import BandPlan, banded_backward, banded_forward, make_plan


def _plan(starts: Tensor, n_q: int, n_k: int, block: int) -> Tuple[BandPlan, list, float]:
    return make_plan(starts.tolist(), n_q, n_k, block)


@torch.library.custom_op("xforget::pruned_fold", mutates_args=(), device_types="cpu")
def pruned_fold(q2: Tensor, k2: Tensor, v2: Tensor, starts: Tensor, block: int, heads: int) -> Tuple[Tensor, Tensor]:
    """Banded causal attention of the folded rows from their first kept keys (module docstring)."""
    plan, skipped, total = _plan(starts, q2.shape[2], k2.shape[2], block)
    skipped_t = torch.tensor(skipped, dtype=torch.float64).view(-1, heads)
    acp.record("fold", skipped_t, torch.full_like(skipped_t, total))
    return banded_forward(q2, k2, v2, plan, 1.0)


@pruned_fold.register_fake
def _pruned_fold_fake(q2: Tensor, k2: Tensor, v2: Tensor, starts: Tensor, block: int,
                      heads: int) -> Tuple[Tensor, Tensor]:
    acc = torch.promote_types(q2.dtype, torch.float32)
    return q2.new_empty(1, q2.shape[1], q2.shape[2], v2.shape[-1]), q2.new_empty(1, q2.shape[1], q2.shape[2], dtype=acc)


@torch.library.custom_op("xforget::pruned_fold_backward", mutates_args=(), device_types="cpu")
def pruned_fold_backward(grad_out: Tensor, q2: Tensor, k2: Tensor, v2: Tensor, out: Tensor, lse: Tensor,
                         starts: Tensor, block: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`pruned_fold` w.r.t. q2, k2, v2 (the same plan, made again from ``starts``)."""
    plan = _plan(starts, q2.shape[2], k2.shape[2], block)[0]
    return banded_backward(grad_out, q2, k2, v2, out, lse, plan, 1.0)


@pruned_fold_backward.register_fake
def _pruned_fold_backward_fake(grad_out, q2, k2, v2, out, lse, starts, block):
    return q2.new_empty(q2.shape), k2.new_empty(k2.shape), v2.new_empty(v2.shape)  # contiguous, as computed


def _setup_context(ctx, inputs, output) -> None:
    q2, k2, v2, starts, block, _ = inputs
    out, lse = output
    ctx.save_for_backward(q2, k2, v2, out, lse, starts)
    ctx.block = block


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    q2, k2, v2, out, lse, starts = ctx.saved_tensors
    dq, dk, dv = pruned_fold_backward(grad_out.contiguous(), q2, k2, v2, out, lse, starts, ctx.block)
    return dq, dk, dv, None, None, None


pruned_fold.register_autograd(_backward, setup_context=_setup_context)
