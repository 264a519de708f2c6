"""Attention over learned memory keys and the sequence keys, as an ordinary attention call.

Memory keys (Burtsev et al., "Memory Transformer", arXiv 2006.11527; :mod:`xforget.nn.memory_kv`)
are prepended to every row: never masked, never decayed (bias 0).

* Without a decay bias they are ordinary keys: concatenated, with a zero
  column of any matrix bias.
* With a causal decay bias the row-constant trick of DESIGN.md section 3 still
  folds everything into one fused kernel.  In row i the sequence keys have
  logit ``s_ij + c_i - c_j`` and memory keys ``s_im``; subtracting ``c_i`` from
  the row,

      sequence key j:  s_ij - c_j          memory key m:  s_im - c_i

  so two appended channels carry it, ``q' = [q, 1/scale, -c_i/scale]``,
  ``k'_j = [k_j, -c_j, 0]``, ``k'_m = [k_m, 0, 1]``, computed in float32 (c
  grows with length).

:func:`xforget.ops.dispatch.route` sends a bidirectional decay with memory (two
row constants: does not fold) and a decay together with a matrix bias to the
dense path instead.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from xforget.ops.backend import AttentionCall
from xforget.ops.common import Tensor, compute_dtype, cumulative_gate, expand_kv


def memory_attention(call: AttentionCall, attend: Callable[..., Tensor], backend: Optional[str]) -> Tensor:
    """Attention over [memory; sequence] keys, computed by ``attend`` on inputs without memory.

    ``attend`` is :func:`xforget.ops.attend` (passed in: the dispatcher sits above
    this module), called with ``backend``.  ``call.memory`` is (mem_k, mem_v),
    each (b, h_kv, m, d).  Returns (b, h, n_q, d) in q's dtype.

    Raises:
        ValueError: a decay bias with ``causal=False`` or with a matrix bias (the dense path serves those).
    """
    q, k, v, s = call.q, call.k, call.v, call.shapes
    mk, mv = call.memory
    m = mk.shape[2]
    full_mask = None if call.mask is None else F.pad(call.mask, (m, 0), value=True)
    if call.log_fgate is None:
        bias = None if call.bias is None else F.pad(call.bias, (m, 0), value=0.0)
        return attend(q, torch.cat((mk, k), 2), torch.cat((mv, v), 2), causal=call.causal, mask=full_mask, bias=bias,
                      scale=call.scale, backend=backend)
    if not call.causal or call.bias is not None:
        raise ValueError("memory keys fold a decay bias for causal attention without a matrix bias only; "
                         "use the dense path")
    ct = compute_dtype(q.dtype)
    h, scale = s.h, call.scale
    c = cumulative_gate(call.log_fgate, call.mask, s, dtype=ct)  # (b, h, n_k)
    c_q = c[..., -s.n_q:]
    ones = torch.ones_like(c_q)
    q2 = torch.cat((q.to(ct), (ones / scale)[..., None], (-c_q / scale)[..., None]), dim=-1)
    k_seq = torch.cat((expand_kv(k, h).to(ct), -c[..., None], torch.zeros_like(c)[..., None]), dim=-1)
    mem_one = torch.ones(s.b, h, m, 1, dtype=ct, device=q.device)
    k_mem = torch.cat((expand_kv(mk, h).to(ct), torch.zeros_like(mem_one), mem_one), dim=-1)
    v_all = torch.cat((expand_kv(mv, h), expand_kv(v, h)), dim=2).to(ct)
    v_all = F.pad(v_all, (0, 2))  # equal head dims for the fused kernels
    with torch.autocast(q.device.type, enabled=False):  # the c channels must stay float32
        out = attend(q2, torch.cat((k_mem, k_seq), dim=2), v_all, causal=True, mask=full_mask, scale=scale,
                     backend=backend)
    return out[..., : v.shape[-1]].to(q.dtype)
