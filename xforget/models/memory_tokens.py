"""Memory tokens: learned vectors prepended to every sequence (x-transformers' ``num_memory_tokens``).

Shared by :class:`~xforget.models.wrapper.TransformerWrapper` and
:class:`~xforget.models.continuous.ContinuousTransformerWrapper`. The meaning is x-transformers': after the
inputs are embedded (an absolute position table included, counted over the inputs only, so the memory
gets no table row), ``M`` learned ``dim``-vectors are concatenated before them; every position can attend
to them (a mask is extended over them, always True), they take the first ``M`` positions of the
attention layers' relative schemes (rotary, decays, biases: only differences matter), and their outputs
are dropped. With a KV cache they are prepended once, on the first call, and stay in the cache.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xforget.nn.kv_cache import Cache


def memory_parameter(count: int, dim: int) -> nn.Parameter | None:
    """(count, dim) float learned memory vectors (std 0.02), or None for ``count == 0``.

    Raises:
        ValueError: count < 0.
    """
    if count < 0:
        raise ValueError(f"num_memory_tokens must be >= 0, got {count}")
    return nn.Parameter(torch.randn(count, dim) * 0.02) if count else None


def memory_to_prepend(memory: Tensor | None, cache: Cache | None) -> int:
    """How many memory vectors this call prepends: all of them on the first call (no cache, or an empty one),
    else 0 (they are in the cache)."""
    if memory is None or (cache is not None and cache.length > 0):
        return 0
    return memory.shape[0]


def extend_mask(mask: Tensor | None, n_mem: int) -> Tensor | None:
    """(b, n) bool -> (b, n_mem + n): the memory is always attended to."""
    if mask is None or not n_mem:
        return mask
    return torch.cat((mask.new_ones(mask.shape[0], n_mem), mask), dim=1)


def prepend_memory(memory: Tensor | None, h: Tensor, n_mem: int) -> Tensor:
    """(b, n, dim) embedded inputs -> (b, n_mem + n, dim), the memory vectors first (in ``h``'s dtype)."""
    if not n_mem:
        return h
    return torch.cat((memory.to(h.dtype).expand(h.shape[0], -1, -1), h), dim=1)


def input_positions(positions: Tensor, n_mem: int, count: int) -> Tensor:
    """Rows of the absolute table for the inputs, from the layers' positions ((n_mem + n,) or (b, n_mem + n)
    int64): counted over the inputs only (``count`` memory vectors take none, ``n_mem`` of them in this call);
    pads right after the memory get row 0 (their value is masked anyway)."""
    return (positions[..., n_mem:] - count).clamp(min=0)
