"""ALiBi: attention with linear biases (Press, Smith, Lewis, ICLR 2022, arXiv 2108.12409).

Head h adds -m_h * |i - j| to the logit of query i and key j. As a causal bias it
is a constant forget gate, log f = -m_h per token, so it is registered as a
"decay" bias and shares the O(n)-memory fused kernel with the FoX forget gate.
Bidirectionally the backward gate is the same constant (symmetric |i - j|).
Pad tokens carry log f = 0, so distances count real tokens only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xforget.nn.bias.registry import BiasBuilder, DecayGates, mask_gate, register_bias


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi head slopes m_h, exactly as in the paper's reference code.

    For a power of two n the slopes are the geometric sequence starting at
    2^(-8/n) with ratio 2^(-8/n). For other counts, the slopes of the largest
    power of two p < heads come first, then every other slope of the 2p set
    (paper section 3, footnote; e.g. 6 heads: the 4-head set, then slopes 1 and
    3 (0-based 0, 2) of the 8-head set).

    Args:
        heads: number of heads (>= 1).
    Returns:
        list of ``heads`` floats, decreasing within each group.
    Raises:
        ValueError: heads < 1.
    """
    if heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got heads={heads}")

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two_slopes(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two_slopes(closest) + power_of_two_slopes(2 * closest)[0::2][: heads - closest]


@register_bias("alibi")
class AlibiBias(BiasBuilder):
    """ALiBi as a constant decay gate.

    Args:
        dim, heads, causal: layer geometry.
        alibi_num_heads: put ALiBi on the first ``alibi_num_heads`` heads only
            (slopes computed for that many heads); the others get zero bias.
    Output: :class:`DecayGates` with log_fgate (batch, heads, n) float32 equal to
    -slope_h at real tokens and 0 at pad tokens.
    """

    kind = "decay"

    def __init__(self, *, dim: int, heads: int, causal: bool, alibi_num_heads: int | None = None) -> None:
        super().__init__(dim=dim, heads=heads, causal=causal)
        n_alibi = heads if alibi_num_heads is None else alibi_num_heads
        if not 1 <= n_alibi <= heads:
            raise ValueError(f"alibi_num_heads must be in 1..heads={heads}, got {alibi_num_heads}")
        slopes = torch.zeros(heads)
        slopes[:n_alibi] = torch.tensor(alibi_slopes(n_alibi))
        self.register_buffer("slopes", slopes, persistent=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> DecayGates:
        b, n = x.shape[0], x.shape[1]
        log_f = (-self.slopes.to(torch.promote_types(x.dtype, torch.float32)))[None, :, None].expand(b, self.heads, n)
        log_f = mask_gate(log_f, mask)
        return DecayGates(log_fgate=log_f, log_bgate=None if self.causal else log_f)
