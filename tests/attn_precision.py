"""Precision of an attention op against float64: inputs, the float64 reference and relative errors.

Shared by the CPU tests (tests/test_flex.py: the FlexAttention forward, which runs on the CPU),
the CUDA tests (tests/test_flex_cuda.py: forward and every gradient) and the precision table of
scripts/gpu_check.py, so the three measure the same thing.  Written for the tests, independent of
xforget's kernels: the reference is the definition (DESIGN.md section 2) in float64, with the
decay as explicit differences of a float64 cumulative sum.

Relative error of a tensor: ``||got - ref|| / ||ref||`` (Frobenius norms over the whole tensor).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

GATES = ("strong", "weak", "mixed")
NAMES = ("out", "dq", "dk", "dv", "dlogf")


def make_case(b: int, h: int, h_kv: int, n: int, d: int, gates: str, *, pad: Optional[str] = None,
              n_q: Optional[int] = None, documents: int = 0, seed: int = 0, device="cpu") -> dict:
    """Float64 inputs of one call: q (b, h, n_q, d), k/v (b, h_kv, n, d), log f (b, h, n), an output weight w.

    gates: "strong" (f ~ 0.4: |c| ~ 0.9 n, thousands at n >= 4096), "weak" (f ~ 0.99), "mixed"
    (per-head time scales from strong to a last head that never forgets, log f = 0).
    pad: None, "left" (row 0 loses its first n/8 keys, the last row its first 3) or "holes".
    documents: that many packed documents of random lengths per row (0: no ``document_ids``).
    """
    gen = torch.Generator().manual_seed(seed)
    n_q = n if n_q is None else n_q

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = randn(b, h, n_q, d), randn(b, h_kv, n, d), randn(b, h_kv, n, d)
    offs = {"strong": torch.zeros(h), "weak": torch.full((h,), 4.5), "mixed": torch.linspace(-1.0, 6.0, h)}[gates]
    lf = F.logsigmoid(randn(b, h, n) + offs[None, :, None])
    if gates == "mixed":
        lf[:, -1] = 0.0
    mask = None
    if pad == "left":
        mask = torch.ones(b, n, dtype=torch.bool)
        mask[0, : n // 8] = False
        mask[-1, :3] = False
    elif pad == "holes":
        mask = torch.ones(b, n, dtype=torch.bool)
        mask[0, n // 3: n // 3 + 37] = False
        mask[-1, ::7] = False
    docs = None
    if documents:
        cuts = torch.stack([torch.randperm(n - 1, generator=gen)[: documents - 1] + 1 for _ in range(b)])
        new = torch.zeros(b, n, dtype=torch.long)
        new.scatter_(1, cuts, 1)
        docs = new.cumsum(-1)
    case = dict(q=q, k=k, v=v, lf=lf, mask=mask, docs=docs, w=randn(b, h, n_q, d))
    return {key: (t.to(device) if isinstance(t, Tensor) else t) for key, t in case.items()}


def reference(case: dict, *, grads: bool = True, block: int = 1024) -> dict:
    """float64 ``out`` (and with ``grads`` dq, dk, dv, dlogf of ``sum(out * w)``), on the case's device.

    Inputs are the case's tensors as given (round them to a dtype first to measure that dtype's
    kernel error alone).  Query blocks of ``block`` rows bound the memory of the logits.
    """
    q, k, v, lf = (case[key].double().detach().requires_grad_(grads) for key in ("q", "k", "v", "lf"))
    mask, docs, w = case["mask"], case["docs"], case["w"].double()
    b, h, n_q, d = q.shape
    h_kv, n = k.shape[1], k.shape[2]
    kk, vv = k.repeat_interleave(h // h_kv, 1), v.repeat_interleave(h // h_kv, 1)
    real = torch.ones(b, n, dtype=torch.bool, device=q.device) if mask is None else mask
    c = torch.where(real[:, None, :], lf.expand(b, h, n), 0.0).cumsum(-1)  # pad keys do not forget
    k_pos = torch.arange(n, device=q.device)
    outs = []
    with torch.enable_grad() if grads else torch.no_grad():
        for m0 in range(0, n_q, block):
            pos = k_pos[n - n_q + m0: n - n_q + min(m0 + block, n_q)]
            logits = torch.einsum("bhid,bhjd->bhij", q[:, :, m0: m0 + len(pos)], kk) / math.sqrt(d)
            logits = logits + (c[..., pos, None] - c[..., None, :])
            seen = (k_pos[None, :] <= pos[:, None])[None, None] & real[:, None, None, :]
            if docs is not None:
                seen = seen & (docs[:, None, pos, None] == docs[:, None, None, :])
            p = logits.masked_fill(~seen, -math.inf).softmax(-1).nan_to_num(0.0)  # empty rows: 0
            outs.append(p @ vv)
        out = torch.cat(outs, 2)
        result = {"out": out.detach()}
        if grads:
            dq, dk, dv, dlf = torch.autograd.grad((out * w).sum(), (q, k, v, lf))
            result.update(dq=dq, dk=dk, dv=dv, dlogf=dlf)
    return result


def run_op(op: Callable, case: dict, dtype: torch.dtype, *, grads: bool = True,
           gate_dtype: torch.dtype = torch.float32) -> dict:
    """``op(q, k, v, log_f, mask=, document_ids=)`` on the case cast to ``dtype`` (gates in ``gate_dtype``):
    ``out`` and, with ``grads``, the gradients of ``sum(out * w)``, all as float64."""
    q, k, v = (case[key].to(dtype).detach().requires_grad_(grads) for key in ("q", "k", "v"))
    lf = case["lf"].to(gate_dtype).detach().requires_grad_(grads)
    with torch.enable_grad() if grads else torch.no_grad():
        out = op(q, k, v, lf, mask=case["mask"], document_ids=case["docs"])
        result = {"out": out.detach().double()}
        if grads:  # an op without a gate (plain SDPA, the dtype's floor) has no d log f
            acc = torch.promote_types(out.dtype, torch.float32)  # the loss in fp32 (fp64 for fp64 runs)
            got = torch.autograd.grad((out.to(acc) * case["w"].to(acc)).sum(), (q, k, v, lf), allow_unused=True)
            result.update({name: g.double() for name, g in zip(NAMES[1:], got) if g is not None})
    return result


def rounded(case: dict, dtype: torch.dtype, gate_dtype: torch.dtype = torch.float32) -> dict:
    """The case as :func:`run_op` feeds it, back in float64: q, k, v rounded to ``dtype``, the gates to ``gate_dtype``.

    The reference of these inputs measures the kernel's own error, not the rounding of its inputs."""
    return {**case, **{key: case[key].to(dtype).double() for key in ("q", "k", "v")},
            "lf": case["lf"].to(gate_dtype).double()}


def rel_errors(got: dict, ref: dict) -> dict:
    """name -> ``||got - ref|| / ||ref||`` for every name both hold."""
    return {name: ((got[name] - ref[name]).norm() / ref[name].norm().clamp_min(1e-300)).item()
            for name in NAMES if name in got and name in ref}


def max_abs_c(case: dict) -> float:
    """``max |c|``, the largest cumulative log gate of the case (what makes a fold imprecise)."""
    return case["lf"].double().cumsum(-1).abs().max().item()
