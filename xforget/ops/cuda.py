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

from xforget.ops.common import Shapes, Tensor, default_scale
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


def cuda_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_fgate: Optional[Tensor],
    *,
    shapes: Shapes,
    causal: bool = True,
    mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    log_bgate: Optional[Tensor] = None,
    prune: bool = True,
    prune_eps: float = 1e-6,
    key_norm: Optional[Tensor] = None,
) -> Tensor:
    """Causal forgetting attention on CUDA tensors; returns q's dtype.

    ``prune``/``prune_eps``/``key_norm`` are accepted for a uniform call; pruning
    is not implemented on CUDA yet (the fold there computes every tile).

    Raises ``ValueError`` for CPU tensors or ``causal=False``.
    """
    if not q.is_cuda:
        raise ValueError("backend 'cuda' needs CUDA tensors; use 'fold', 'chunked' or 'reference' on CPU")
    if not causal:
        raise ValueError("backend 'cuda' serves causal attention only; use 'chunked' for causal=False")
    s = shapes
    kernel = fla_kernel()
    if (
        kernel is not None
        and log_fgate is not None
        and mask is None
        and s.n_q == s.n_k
        and s.d == s.d_v
        and q.dtype in (torch.float16, torch.bfloat16)
    ):
        g = log_fgate.float().expand(s.b, s.h, s.n_k).transpose(1, 2).contiguous()  # (b, n, h)
        out = kernel(
            q.transpose(1, 2).contiguous(),
            k.transpose(1, 2).contiguous(),
            v.transpose(1, 2).contiguous(),
            g,
            scale=default_scale(s.d, scale),
        )
        return out.transpose(1, 2).to(q.dtype)
    return fold_attention(
        q, k, v, log_fgate, shapes=s, causal=True, mask=mask, scale=scale, log_bgate=log_bgate, channel_multiple=8
    )
