"""CUDA backend: an optional installed Triton kernel, else the fold on GPU SDPA.

Opt-in (``XFORGET_USE_FLA=1``, because it has not been validated on our CI):
if the ``fla`` package (flash-linear-attention) is importable, its
``parallel_forgetting_attn`` serves the case it covers: causal, no padding
mask, as many queries as keys, fp16/bf16.  Everything else (and every case by
default) goes through the key-channel fold with GPU SDPA, the folded head dim
rounded up to a multiple of 8 for the fused kernels.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from xforget.ops.backend import AttentionCall
from xforget.ops.common import Tensor
from xforget.ops.fold import fold_attention

_FLA: Optional[Callable] = None
_FLA_TRIED = False


def fla_kernel() -> Optional[Callable]:
    """``fla.ops.forgetting_attn.parallel_forgetting_attn`` or None."""
    global _FLA, _FLA_TRIED
    if not _FLA_TRIED:
        _FLA_TRIED = True
        if os.environ.get("XFORGET_USE_FLA", "") in ("1", "true", "yes"):
            try:
                from fla.ops.forgetting_attn import parallel_forgetting_attn  # type: ignore

                _FLA = parallel_forgetting_attn
            except Exception:  # not installed, or no Triton: fall back to the fold
                _FLA = None
    return _FLA


def cuda_attention(call: AttentionCall) -> Tensor:
    """Causal forgetting attention on CUDA tensors; returns q's dtype.

    ``call.prune`` is not implemented on CUDA yet (the fold there computes
    every tile).

    Raises ``ValueError`` for CPU tensors or ``causal=False``.
    """
    if not call.q.is_cuda:
        raise ValueError("backend 'cuda' needs CUDA tensors; use 'fold', 'chunked' or 'reference' on CPU")
    call.require_causal("cuda")
    s, q, log_fgate = call.shapes, call.q, call.log_fgate
    kernel = fla_kernel()
    if (
        kernel is not None
        and log_fgate is not None
        and call.mask is None
        and call.document_ids is None  # its cu_seqlens form packs a batch of one row; ours are rows
        and s.n_q == s.n_k
        and s.d == s.d_v
        and q.dtype in (torch.float16, torch.bfloat16)
    ):
        g = log_fgate.float().expand(s.b, s.h, s.n_k).transpose(1, 2).contiguous()  # (b, n, h)
        out = kernel(
            q.transpose(1, 2).contiguous(),
            call.k.transpose(1, 2).contiguous(),
            call.v.transpose(1, 2).contiguous(),
            g,
            scale=call.scale,
        )
        return out.transpose(1, 2).to(q.dtype)
    return fold_attention(call, channel_multiple=8)
