"""Rotary position embedding (RoPE; Su et al., "RoFormer", arXiv 2104.09864, eq. 34), with
partial rotary and xPos.

Adjacent channel pairs (2i, 2i+1) of each query and key (the same interleaved
layout as x-transformers, so weights move over unchanged) are rotated by angle
pos * base^(-2i/d_rot); the dot product of a rotated query and key then depends
only on the distance between their positions. Channels beyond ``rotary_dim``
are left unrotated (partial rotary, GPT-J). Angles are computed in float32 (float64 in a float64 model).

xPos (Sun et al., "A Length-Extrapolatable Transformer", arXiv 2212.10554, eq. 6)
additionally scales pair i of a query at position m by zeta_i^(m / B) and of a
key at position n by zeta_i^(-n / B), with zeta_i = (2i/d_rot + 0.4) / 1.4 and
B = ``xpos_scale_base``; the score then decays as zeta^((m - n) / B). It is for
causal attention only (keys must not come after queries). The exponent is
taken from position 0 (x-transformers centres it on the sequence middle; the
product is the same), so cached decoding stays exact; in float32 the factors
stay finite up to about 70 * B positions (35k tokens at B = 512).
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
        xpos: apply the xPos scale (causal attention only).
        xpos_scale_base: B of xPos (512 in the paper).
    Raises:
        ValueError: odd or too large rotary_dim; non-positive base or scale base.
    """

    def __init__(
        self,
        dim_head: int,
        rotary_dim: int | None = None,
        base: float = 10000.0,
        *,
        xpos: bool = False,
        xpos_scale_base: float = 512.0,
    ) -> None:
        super().__init__()
        rotary_dim = dim_head if rotary_dim is None else rotary_dim
        if rotary_dim % 2 or not 0 < rotary_dim <= dim_head:
            raise ValueError(f"rotary_dim must be even and in 2..dim_head={dim_head}, got {rotary_dim}")
        if not base > 0 or not xpos_scale_base > 0:
            raise ValueError(f"rotary_base and rotary_xpos_scale_base must be > 0, got {base}, {xpos_scale_base}")
        self.rotary_dim, self.xpos, self.xpos_scale_base = rotary_dim, xpos, float(xpos_scale_base)
        inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        zeta = (torch.arange(0, rotary_dim, 2, dtype=torch.float32) + 0.4 * rotary_dim) / (1.4 * rotary_dim)
        self.register_buffer("xpos_zeta", zeta, persistent=False)

    def forward(self, t: Tensor, positions: Tensor, *, is_key: bool = False) -> Tensor:
        """Rotate ``t`` (batch, heads, n, dim_head) at ``positions`` (n,) or (batch, n).

        ``is_key`` selects the inverse xPos scale (ignored without xPos).
        Returns a tensor of t's shape and dtype.
        """
        # fp32 at least (bf16 angles would be wrong past a few hundred positions), float64 in a float64
        # model: a float32 step there costs the gradients their float64 digits (1e-8 relative)
        ct = torch.promote_types(t.dtype, torch.float32)
        angles = positions.to(ct)[..., None] * self.inv_freq.to(ct)  # (..., n, rot/2)
        if angles.ndim == 3:  # per-row positions (batch, n, rot/2) -> broadcast over heads
            angles = angles[:, None]
        cos, sin = angles.cos(), angles.sin()
        if self.xpos:
            power = positions.to(ct)[..., None] / self.xpos_scale_base
            scale = self.xpos_zeta.to(ct) ** (-power if is_key else power)
            if scale.ndim == 3:
                scale = scale[:, None]
            cos, sin = cos * scale, sin * scale
        rot, rest = t[..., : self.rotary_dim].to(ct), t[..., self.rotary_dim :]
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2).to(t.dtype)
        return torch.cat((rotated, rest), dim=-1)
