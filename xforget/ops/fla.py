"""The optional "fla" backend: FLA's Triton kernel ``parallel_forgetting_attn`` (package ``fla-core``).

Yang, Zhang et al., flash-linear-attention (github.com/fla-org/flash-linear-attention),
``fla.ops.forgetting_attn.parallel_forgetting_attn``: FoX (arXiv 2503.02130) as a
Triton kernel.  Installed with the extra ``pip install 'xforget[cuda]'``.  It
serves causal self-attention on CUDA without a padding mask or packed documents
(as many queries as keys); every other call (decoding, padding, documents) runs
on "flex" (:mod:`xforget.ops.flex`), which serves all of them.  It does not
prune.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

from xforget.ops.backend import AttentionCall
from xforget.ops.common import Tensor
from xforget.ops.flex import flex_attention_backend

MISSING = "backend 'fla' needs the package fla-core (FLA's Triton kernels): pip install 'xforget[cuda]'"


def fla_available() -> bool:
    """Whether the ``fla`` package can be imported (without importing it, nor Triton)."""
    return importlib.util.find_spec("fla") is not None


def fla_kernel() -> Callable:
    """``fla.ops.forgetting_attn.parallel_forgetting_attn``; ``ValueError`` naming the extra when missing."""
    try:
        from fla.ops.forgetting_attn import parallel_forgetting_attn  # type: ignore
    except ImportError:
        raise ValueError(MISSING) from None
    return parallel_forgetting_attn


def fla_attention(call: AttentionCall) -> Tensor:
    """Causal forgetting attention through FLA's kernel where it applies, else "flex"; returns q's dtype.

    Raises:
        ValueError: fla-core not installed (the message names the extra); CPU tensors;
            ``causal=False``.
    """
    if not call.q.is_cuda:
        raise ValueError("backend 'fla' needs CUDA tensors; use 'fold', 'chunked' or 'reference' on CPU")
    call.require_causal("fla")
    kernel = fla_kernel()
    s = call.shapes
    if call.mask is not None or call.document_ids is not None or s.n_q != s.n_k or call.log_fgate is None:
        return flex_attention_backend(call)
    g = call.log_fgate.float().expand(s.b, s.h, s.n_k).transpose(1, 2).contiguous()  # (b, n, h) log gates
    out = kernel(call.q.transpose(1, 2).contiguous(), call.k.transpose(1, 2).contiguous(),
                 call.v.transpose(1, 2).contiguous(), g, scale=call.scale)
    return out.transpose(1, 2).to(call.q.dtype)


