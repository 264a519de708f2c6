"""Shared argument checking and small helpers for the attention ops.

The conventions every backend follows (shapes, grouped-query heads, queries
as the last keys, key masks, gates cumulated in >= fp32) are written down with
the backend interface, :mod:`xforget.ops.backend`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Shapes:
    b: int
    h: int
    h_kv: int
    n_q: int
    n_k: int
    d: int
    d_v: int

    @property
    def groups(self) -> int:
        return self.h // self.h_kv

    @property
    def offset(self) -> int:
        """Position of query 0 among the keys (``n_k - n_q``)."""
        return self.n_k - self.n_q


def check_inputs(q: Tensor, k: Tensor, v: Tensor, *, mask: Optional[Tensor] = None,
                 log_fgate: Optional[Tensor] = None, log_bgate: Optional[Tensor] = None) -> Shapes:
    """Validate shapes; raise ``ValueError`` with a readable message otherwise."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "q, k, v must be 4-d (b, heads, n, d); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, n_q, d = q.shape
    bk, h_kv, n_k, dk = k.shape
    if bk != b or v.shape[0] != b:
        raise ValueError(f"batch sizes differ: q {b}, k {bk}, v {v.shape[0]}")
    if v.shape[1] != h_kv or v.shape[2] != n_k:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} disagree in heads or length")
    if dk != d:
        raise ValueError(f"q and k head dims differ: {d} vs {dk}")
    if h_kv == 0 or h % h_kv != 0:
        raise ValueError(f"kv heads ({h_kv}) must divide query heads ({h})")
    if n_q > n_k:
        raise ValueError(f"more queries than keys ({n_q} > {n_k}); queries are the last n_q key positions")
    if not (q.is_floating_point() and k.dtype == q.dtype and v.dtype == q.dtype):
        raise ValueError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = real key); got {mask.dtype}")
        if tuple(mask.shape) != (b, n_k):
            raise ValueError(f"mask must have shape (b, n_k) = {(b, n_k)}; got {tuple(mask.shape)}")
    for name, g in (("log_fgate", log_fgate), ("log_bgate", log_bgate)):
        if g is None:
            continue
        if not g.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor; got {g.dtype}")
        if g.dim() != 3 or g.shape[-1] != n_k:
            raise ValueError(f"{name} must have shape (b, h, n_k) = {(b, h, n_k)}; got {tuple(g.shape)}")
        try:
            torch.broadcast_shapes(tuple(g.shape), (b, h, n_k))
        except RuntimeError:
            raise ValueError(f"{name} must broadcast to (b, h, n_k) = {(b, h, n_k)}; got {tuple(g.shape)}") from None
    return Shapes(b, h, h_kv, n_q, n_k, d, v.shape[-1])


def default_scale(d: int, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


def kernel_dtype(x: Tensor) -> torch.dtype:
    """The dtype the fused SDPA kernel runs in for inputs like ``x``.

    On the CPU, PyTorch's flash kernel in bf16/fp16 is slower than in fp32
    (measured on the dev machine with AMX, torch 2.13: fwd+bwd at b=16, h=8,
    n=256, d=32 takes ~1.75x the fp32 time; ``scripts/bench_train.py``), and
    fp32 is also exact for the fold's per-key channel.  So half-precision CPU
    inputs are computed in fp32 (the caller casts the output back); CUDA keeps
    the input dtype.
    """
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return x.dtype


def gate_dtype(x: Tensor) -> torch.dtype:
    """fp32, or fp64 when the gate already is fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The >= fp32 dtype the materialised paths compute logits and softmax in for inputs of ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def cumulative_gate(
    log_gate: Optional[Tensor], mask: Optional[Tensor], s: Shapes, dtype: Optional[torch.dtype] = None
) -> Optional[Tensor]:
    """``cumsum(log_gate)`` along keys, shape ``(b, h, n_k)``, in ``dtype`` (default :func:`gate_dtype`, >= fp32).

    Pad keys (``mask`` False) contribute 0: they do not forget.
    """
    g = key_gates(log_gate, mask, s, dtype)
    return None if g is None else g.cumsum(-1)


def key_gates(
    log_gate: Optional[Tensor], mask: Optional[Tensor], s: Shapes, dtype: Optional[torch.dtype] = None
) -> Optional[Tensor]:
    """``log_gate`` expanded to ``(b, h, n_k)`` in ``dtype`` (default :func:`gate_dtype`), pad keys 0."""
    if log_gate is None:
        return None
    g = log_gate.to(gate_dtype(log_gate) if dtype is None else dtype).expand(s.b, s.h, s.n_k)
    if mask is not None:
        g = g.masked_fill(~mask[:, None, :], 0.0)
    return g


def expand_kv(x: Tensor, h: int) -> Tensor:
    """``(b, h_kv, n, d) -> (b, h, n, d)`` by repeating each kv head ``h // h_kv`` times."""
    b, h_kv, n, d = x.shape
    if h_kv == h:
        return x
    return x[:, :, None].expand(b, h_kv, h // h_kv, n, d).reshape(b, h, n, d)


def query_positions(s: Shapes, device) -> Tensor:
    return torch.arange(s.offset, s.n_k, device=device)


def valid_rows(mask: Optional[Tensor], s: Shapes, causal: bool) -> Optional[Tensor]:
    """``(b, n_q)`` bool: does query row have at least one visible real key?

    ``None`` when every row does (no padding mask).
    """
    if mask is None:
        return None
    if causal:
        seen = mask.cumsum(-1) > 0  # any real key at or before this position
        return seen[:, s.offset:]
    return mask.any(-1, keepdim=True).expand(s.b, s.n_q)


def zero_invalid_rows(out: Tensor, rows: Optional[Tensor]) -> Tensor:
    """Zero the output of fully masked rows (``rows`` from :func:`valid_rows`)."""
    if rows is None:
        return out
    return out * rows[:, None, :, None].to(out.dtype)


def needs_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
