"""FlexAttention backend: the decay added in fp32 inside the fused kernel, pruning as its block mask.

FoX (Lin, Nikishin, He, Courville, ICLR 2025, arXiv 2503.02130) through
PyTorch's ``torch.nn.attention.flex_attention`` (Dong et al., "Flex Attention:
A Programming Model for Generating Optimized Attention Kernels", 2024):

* the decay bias is a ``score_mod``: ``score + (c_i - c_j)`` with
  ``c = cumsum(log_fgate)`` in fp32 captured as a tensor, added to the fp32
  scores inside the kernel and differentiated there (its gradient accumulated
  in fp32).  The key-channel fold (:mod:`xforget.ops.fold`) instead returns its
  key-channel gradients rounded to the input dtype, so d log_fgate, a reverse
  cumulative sum of them, loses what cancels in bf16 (0.21 relative error with
  strong gates on an H200, DESIGN.md section 8; this path measured 0.0028
  there).  ALiBi is the constant gate ``log f = -slope``: the same ``c``.
* the row side ``c_i`` is detached: its gradient is ``sum_j dS_ij``, and every
  row of dS sums to zero (``dS = P * (dP - rowsum(P * dP))``), so it is zero in
  exact arithmetic; this also keeps the captured tensor that needs a gradient
  indexed once per ``score_mod`` (what FlexAttention supports).  Gradients into
  captured tensors use atomic adds on CUDA: not bit-deterministic.
* causality, padding, packed documents and adaptive computation pruning
  (:mod:`xforget.ops.prune`, same ``eps`` bound) form one ``BlockMask`` built
  from tile arithmetic (:mod:`xforget.ops.block_mask`).

On CUDA the op runs through ``torch.compile(flex_attention)`` (compiled once,
as PyTorch documents; inside an already compiled model the outer compilation
takes it).  On the CPU it runs eagerly, which materialises the (n_q, n_k)
scores (fine for tests, not for long inputs) and has no backward: the CPU
path refuses inputs that need a gradient.  The CPU default stays the fold.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from xforget.ops import prune as acp
from xforget.ops.backend import AttentionCall
from xforget.ops.block_mask import FLEX_BLOCK, block_mask, tile_plan, visibility_mod
from xforget.ops.common import Tensor, needs_grad
from xforget.ops.documents import block_key_starts

_COMPILED: Optional[Callable] = None


def flex_kernel(device: torch.device) -> Callable:
    """``flex_attention`` compiled once for CUDA (the fused Triton kernel), eager elsewhere."""
    global _COMPILED
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention
    if _COMPILED is None:
        _COMPILED = torch.compile(flex_attention)
    return _COMPILED


def decay_score_mod(c: Tensor, offset: int) -> Callable:
    """``score_mod(score, b, h, q_idx, kv_idx) = score + (c[q_idx + offset] - c[kv_idx])``.

    ``c``: (b, h, n_k) cumulative log gate in >= fp32 (the kernel's score dtype); query ``q_idx`` sits
    at key position ``q_idx + offset``.  The row side is detached (module docstring).
    """
    row = c.detach()

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + (row[b, h, q_idx + offset] - c[b, h, kv_idx])

    return score_mod


def pruning_starts(call: AttentionCall, c: Tensor, q_block: int, kv_block: int) -> Tensor:
    """(b, h, n_q_blocks) first kept key per query block: the bound of :mod:`xforget.ops.prune`.

    Starts are multiples of ``kv_block`` (whole tiles are dropped); keys of earlier packed
    documents count as forgotten (``floor``).
    """
    s = call.shapes
    kn = acp.key_norms(call.k, s.h, call.mask, call.key_norm)
    floor = None
    if call.document_ids is not None:
        floor = block_key_starts(call.document_ids, s, q_block)[:, None, :]
    return acp.block_starts(call.q, kn, c, call.mask, s, call.scale, call.prune_eps,
                            block=q_block, align=kv_block, floor=floor)


def _record(starts: Tensor, call: AttentionCall, q_block: int) -> None:
    """The skipped causal pairs in the prune log, like the fold's (eager only: the log is Python state)."""
    if torch.compiler.is_compiling() or acp.current_log() is None:
        return
    pruned, total = acp.pruned_pairs(starts.expand(call.shapes.b, call.shapes.h, -1), call.shapes, q_block)
    acp.record("flex", pruned, total)


def _pow2_head_dims(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v zero-padded to a power-of-two head dim >= 16 (what the flex CUDA kernels tile by).

    Zero channels add nothing to the scores; the extra value channels are sliced off the output.
    """
    def width(d: int) -> int:
        return max(16, 1 << (d - 1).bit_length())

    dq, dv = width(q.shape[-1]), width(v.shape[-1])
    if dq != q.shape[-1]:
        q, k = F.pad(q, (0, dq - q.shape[-1])), F.pad(k, (0, dq - k.shape[-1]))
    if dv != v.shape[-1]:
        v = F.pad(v, (0, dv - v.shape[-1]))
    return q, k, v


def flex_inputs(call: AttentionCall, *, q_block: int = FLEX_BLOCK, kv_block: int = FLEX_BLOCK):
    """``(score_mod, block_mask)`` of a causal call: the decay (None without a gate) and the tiles to run.

    The pruning plan (with ``call.prune`` and a gate) is recorded in the prune log here.
    """
    s, q = call.shapes, call.q
    c = call.forward_decay()
    if c is not None:  # the kernel's score dtype: fp32, or fp64 for fp64 inputs (CPU reference runs)
        c = c.to(torch.float64 if q.dtype == torch.float64 else torch.float32).contiguous()
    starts = None
    if call.prune and c is not None and s.n_k > kv_block:
        starts = pruning_starts(call, c, q_block, kv_block)
        _record(starts, call, q_block)
    plan = tile_plan(s, q.device, mask=call.mask, document_ids=call.document_ids, starts=starts,
                     q_block=q_block, kv_block=kv_block)
    mod = visibility_mod(s, mask=call.mask, document_ids=call.document_ids, starts=starts, q_block=q_block)
    return (None if c is None else decay_score_mod(c, s.offset)), block_mask(plan, s, mod)


def flex_attention_backend(call: AttentionCall, *, q_block: int = FLEX_BLOCK, kv_block: int = FLEX_BLOCK) -> Tensor:
    """Causal forgetting attention through FlexAttention; returns ``(b, h, n_q, d_v)`` in q's dtype.

    ``call.prune`` (default on): tiles whose every weight the bound of :mod:`xforget.ops.prune`
    puts below ``prune_eps / n_k`` of the row's reference key are left out of the block mask
    (pruned mass per row < ``prune_eps``; heads that never forget keep every causal tile, i.e.
    the plain causal block mask); the pruned fraction is recorded in the prune log.

    Raises:
        ValueError: ``causal=False`` (use "chunked"); a dense ``bias`` (use "chunked" or
            "reference"); CPU inputs that need a gradient (FlexAttention has no CPU backward:
            use "fold", the CPU default, or run under ``torch.no_grad()``).
    """
    call.require_causal("flex")
    if call.bias is not None:
        raise ValueError("backend 'flex' takes decay biases (FoX, ALiBi) only, not a dense bias; "
                         "use 'chunked' or 'reference'")
    s, q, k, v = call.shapes, call.q, call.k, call.v
    if not q.is_cuda and needs_grad(q, k, v, call.log_fgate):
        raise ValueError("backend 'flex' on CPU tensors is forward-only (FlexAttention has no CPU backward); "
                         "use 'fold' (the CPU default) or call it under torch.no_grad()")
    score_mod, bm = flex_inputs(call, q_block=q_block, kv_block=kv_block)
    if q.is_cuda:
        q, k, v = _pow2_head_dims(q, k, v)
    kernel = flex_kernel(q.device)
    args = dict(score_mod=score_mod, block_mask=bm, scale=call.scale, enable_gqa=s.h != s.h_kv)
    if q.is_cuda or torch.compiler.is_compiling():
        out = kernel(q, k, v, **args)
    else:
        with warnings.catch_warnings():  # the eager CPU path warns that it is unfused: known, and why it is CPU only
            warnings.simplefilter("ignore", UserWarning)
            out = kernel(q, k, v, **args)
    return call.finish(out[..., : s.d_v])
