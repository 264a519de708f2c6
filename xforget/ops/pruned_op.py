"""The fold's data-dependent plans as PyTorch operators, so that ``torch.compile`` keeps them (DESIGN.md 3.1, 7).

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

Packed documents (DESIGN.md section 7) are the same kind of plan, one first key per (batch row,
query block), and get the same treatment:

    out, lse = torch.ops.xforget.document_fold(q2, k2, v2, document_ids, starts, block)

``q2`` (b, h, n_q, w), ``k2`` / ``v2`` (b, h, n_k, w) contiguous, ``document_ids`` (b, n_k) int64,
``starts`` (b, n_blocks) int64 (:func:`xforget.ops.documents.block_key_starts`, raised by the
pruning bound); ``out`` (b, h, n_q, w), ``lse`` (b, h, n_q) >= fp32.  Each call records its
skipped pairs (:func:`xforget.ops.documents.skipped_pairs`) like a pruned call.
"""

from __future__ import annotations

from typing import Tuple

import torch

from xforget.ops import prune as acp
from xforget.ops.common import Shapes, Tensor
from xforget.ops.documents import document_blocks_backward, document_blocks_forward, skipped_pairs
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


# ----------------------------------------------------------------------------- packed documents


@torch.library.custom_op("xforget::document_fold", mutates_args=(), device_types="cpu")
def document_fold(q2: Tensor, k2: Tensor, v2: Tensor, document_ids: Tensor, starts: Tensor,
                  block: int) -> Tuple[Tensor, Tensor]:
    """Causal attention of packed documents, each query block from its first kept key (module docstring)."""
    b, h, n_q, _ = q2.shape
    n_k = k2.shape[2]
    lists = starts.tolist()
    shapes = Shapes(b, h, h, n_q, n_k, q2.shape[-1], v2.shape[-1])
    skipped = torch.tensor(skipped_pairs(lists, shapes, block), dtype=torch.float64)
    total = float(n_q * (n_k - n_q + 1) + n_q * (n_q - 1) // 2)
    acp.record("fold", skipped[:, None].expand(b, h), torch.full((b, h), total, dtype=torch.float64))
    return document_blocks_forward(q2, k2, v2, document_ids, lists, block)


@document_fold.register_fake
def _document_fold_fake(q2, k2, v2, document_ids, starts, block):
    acc = torch.promote_types(q2.dtype, torch.float32)
    b, h, n_q, _ = q2.shape
    return q2.new_empty(b, h, n_q, v2.shape[-1]), q2.new_empty(b, h, n_q, dtype=acc)


@torch.library.custom_op("xforget::document_fold_backward", mutates_args=(), device_types="cpu")
def document_fold_backward(grad_out: Tensor, q2: Tensor, k2: Tensor, v2: Tensor, out: Tensor, lse: Tensor,
                           document_ids: Tensor, starts: Tensor, block: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`document_fold` w.r.t. q2, k2, v2."""
    return document_blocks_backward(grad_out, q2, k2, v2, out, lse, document_ids, starts.tolist(), block)


@document_fold_backward.register_fake
def _document_fold_backward_fake(grad_out, q2, k2, v2, out, lse, document_ids, starts, block):
    return q2.new_empty(q2.shape), k2.new_empty(k2.shape), v2.new_empty(v2.shape)


def _setup_documents(ctx, inputs, output) -> None:
    q2, k2, v2, document_ids, starts, block = inputs
    out, lse = output
    ctx.save_for_backward(q2, k2, v2, out, lse, document_ids, starts)
    ctx.block = block


def _documents_backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    q2, k2, v2, out, lse, document_ids, starts = ctx.saved_tensors
    dq, dk, dv = document_fold_backward(grad_out.contiguous(), q2, k2, v2, out, lse, document_ids, starts, ctx.block)
    return dq, dk, dv, None, None, None


document_fold.register_autograd(_documents_backward, setup_context=_setup_documents)
