"""Rotary position embedding (RoPE; Su et al., "RoFormer", arXiv 2104.09864, eq. 34).

Adjacent channel pairs (2i, 2i+1) of each query and key (the same interleaved
layout as x-transformers, so weights move over unchanged) are rotated by angle
pos * base^(-2i/d_rot); the dot product of a rotated query and key then depends
only on the distance between their positions. Angles are computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Rotary embedding over the first ``rotary_dim`` channels of each head.

    Args:
        dim_head: channels per head.
        rotary_dim: rotated channels (even, <= dim_head); default all (partial
            rotary leaves the rest unrotated).
        base: the frequency base (10000 in RoPE).
    Raises:
        ValueError: odd or too large rotary_dim.
    """

    def __init__(self, dim_head: int, rotary_dim: int | None = None, base: float = 10000.0) -> None:
        super().__init__()
        rotary_dim = dim_head if rotary_dim is None else rotary_dim
        if rotary_dim % 2 or not 0 < rotary_dim <= dim_head:
            raise ValueError(f"rotary_dim must be even and in 2..dim_head={dim_head}, got {rotary_dim}")
        self.rotary_dim = rotary_dim
        inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, t: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``t`` (batch, heads, n, dim_head) at ``positions`` (n,) or (batch, n).

        Returns a tensor of t's shape and dtype.
        """
        angles = positions.float()[..., None] * self.inv_freq  # (..., n, rot/2)
        if angles.ndim == 3:  # per-row positions (batch, n, rot/2) -> broadcast over heads
            angles = angles[:, None]
        cos, sin = angles.cos(), angles.sin()
        rot, rest = t[..., : self.rotary_dim].float(), t[..., self.rotary_dim :]
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2).to(t.dtype)
        return torch.cat((rotated, rest), dim=-1)
