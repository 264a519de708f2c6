"""Learned memory key/values (Burtsev et al., "Memory Transformer", arXiv 2006.11527;
"persistent memory", Sukhbaatar et al. 2019, arXiv 1907.01470).

``num_mem_kv`` learned key/value pairs per KV head are prepended to every
attention layer's keys and values: every query sees them, they are never
masked, never rotated and never decayed by a forget gate or ALiBi (bias 0).

Decay biases and memory (causal): the row-constant trick of DESIGN.md section 3
still folds the whole thing into one fused kernel. In row i the sequence keys
have logit s_ij + c_i - c_j and memory keys s_im; subtracting c_i from the row,

    sequence key j:  s_ij - c_j          memory key m:  s_im - c_i

so two appended channels carry it, q' = [q, 1/scale, -c_i/scale],
k'_j = [k_j, -c_j, 0], k'_m = [k_m, 0, 1], computed in float32 (c grows with
length). Bidirectional layers with a decay bias go to the dense path instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xforget.ops import attend
from xforget.ops.common import expand_kv


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

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool,
        mask: Tensor | None = None,
        log_fgate: Tensor | None = None,
        bias: Tensor | None = None,
        backend: str | None = None,
    ) -> Tensor:
        """Attention over [memory; sequence] keys (shapes as :func:`xforget.ops.attend`).

        ``log_fgate`` (b, h, n_k) is the decay of the sequence keys (causal only here);
        ``bias`` a dense (.., n_q, n_k) bias of the sequence keys (memory columns get 0).
        Returns (b, h, n_q, d) in q's dtype.
        """
        b, h, n_q, d = q.shape
        mk, mv = self.batch(b, k.dtype)
        m = self.num_mem
        full_mask = None if mask is None else F.pad(mask, (m, 0), value=True)
        if log_fgate is None:
            if bias is not None:
                bias = F.pad(bias, (m, 0), value=0.0)
            return attend(
                q, torch.cat((mk, k), 2), torch.cat((mv, v), 2), causal=causal, mask=full_mask, bias=bias, backend=backend
            )
        if not causal or bias is not None:
            raise ValueError("MemoryKV.attend folds a decay bias for causal attention only; use the dense path")
        ct = torch.promote_types(q.dtype, torch.float32)
        scale = 1.0 / math.sqrt(d)
        gate = log_fgate.to(ct).expand(b, h, -1)
        if mask is not None:
            gate = gate.masked_fill(~mask[:, None, :], 0.0)
        c = gate.cumsum(-1)  # (b, h, n_k)
        c_q = c[..., -n_q:]
        ones = torch.ones_like(c_q)
        q2 = torch.cat((q.to(ct), (ones / scale)[..., None], (-c_q / scale)[..., None]), dim=-1)
        k_seq = torch.cat((expand_kv(k, h).to(ct), -c[..., None], torch.zeros_like(c)[..., None]), dim=-1)
        mem_one = torch.ones(b, h, m, 1, dtype=ct, device=q.device)
        k_mem = torch.cat((expand_kv(mk, h).to(ct), torch.zeros_like(mem_one), mem_one), dim=-1)
        v_all = torch.cat((expand_kv(mv, h), expand_kv(v, h)), dim=2).to(ct)
        v_all = F.pad(v_all, (0, 2))  # equal head dims for the fused kernels
        with torch.autocast(q.device.type, enabled=False):  # the c channels must stay float32
            out = attend(
                q2, torch.cat((k_mem, k_seq), dim=2), v_all, causal=True, mask=full_mask, scale=scale, backend=backend
            )
        return out[..., : v.shape[-1]].to(q.dtype)
