"""Learned memory key/values (Burtsev et al., "Memory Transformer", arXiv 2006.11527;
"persistent memory", Sukhbaatar et al. 2019, arXiv 1907.01470).

``num_mem_kv`` learned key/value pairs per KV head are prepended to every
attention layer's keys and values: every query sees them, they are never
masked, never rotated and never decayed by a forget gate or ALiBi (bias 0).
The attention over them is :func:`xforget.ops.attend` with ``memory=``
(:mod:`xforget.ops.memory` folds a causal decay bias into one fused kernel).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xforget.ops import attend
from xforget.ops.common import expand_kv as expand_heads  # noqa: F401  (its old name here)


class MemoryKV(nn.Module):
    """``num_mem`` learned key/value pairs per KV head.

    Args:
        kv_heads, num_mem, dim_head: shapes of ``k`` and ``v``, (kv_heads, num_mem, dim_head).
    """

    def __init__(self, kv_heads: int, num_mem: int, dim_head: int) -> None:
        super().__init__()
        self.num_mem = num_mem
        self.k = nn.Parameter(torch.randn(kv_heads, num_mem, dim_head))
        self.v = nn.Parameter(torch.randn(kv_heads, num_mem, dim_head))

    def batch(self, b: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Memory keys and values expanded to the batch: (b, kv_heads, num_mem, dim_head) each."""
        return (self.k.to(dtype)[None].expand(b, -1, -1, -1), self.v.to(dtype)[None].expand(b, -1, -1, -1))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **inputs) -> Tensor:
        """Attention over [memory; sequence] keys: :func:`xforget.ops.attend` with ``memory=`` these keys.

        ``q``, ``k``, ``v`` and the keyword inputs as in :func:`xforget.ops.attend`
        (``log_fgate``, ``bias``: of the sequence keys; memory columns get 0).
        Returns (b, h, n_q, d) in q's dtype.
        """
        return attend(q, k, v, memory=self.batch(q.shape[0], k.dtype), **inputs)
