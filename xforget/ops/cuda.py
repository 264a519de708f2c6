"""The "cuda" backend: the key-channel fold (:mod:`xforget.ops.fold`) on GPU SDPA.

Kept by name for comparison and for float64 on CUDA; the CUDA default is
"flex" (:mod:`xforget.ops.flex`).  The folded head dim is rounded up to a
multiple of 8 for the fused GPU kernels.  Known limit (DESIGN.md section 8):
in bf16 the fused kernel returns the folded key channels' gradients rounded to
bf16, so d log_fgate loses what cancels in its reverse cumulative sum (0.21
relative error with strong gates on an H200); outputs and dq/dk/dv are at the
dtype's floor.  It computes every tile (no pruning).
"""

from __future__ import annotations

from xforget.ops.backend import AttentionCall
from xforget.ops.common import Tensor
from xforget.ops.fold import fold_attention


def cuda_attention(call: AttentionCall) -> Tensor:
    """Causal forgetting attention on CUDA tensors through the fold; returns q's dtype.

    Raises ``ValueError`` for CPU tensors or ``causal=False``.
    """
    if not call.q.is_cuda:
        raise ValueError("backend 'cuda' needs CUDA tensors; use 'fold', 'chunked' or 'reference' on CPU")
    call.require_causal("cuda")
    return fold_attention(call, channel_multiple=8)
