"""Dynamic position bias: a small MLP maps each relative distance to one bias per head.

Wang et al., "CrossFormer" (arXiv 2108.00154), section 3.3 ("dynamic position
bias"); the language-model form of x-transformers' ``DynamicPositionBias``:

    bias_h(i, j) = MLP(i - j)_h,   MLP = Linear(1, d) -> SiLU -> [Linear(d, d) -> SiLU] * (depth - 1) -> Linear(d, heads)

optionally on sign(i - j) * log(|i - j| + 1) (``dynamic_bias_log_distance``).
The MLP runs once per distinct distance, then is gathered into the matrix; any
distance works, so it extrapolates past the training length. One MLP is shared
by all layers of a stack.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xforget.nn.bias.registry import BiasBuilder, heads_first, query_minus_key, register_bias


@register_bias("dynamic")
class DynamicPositionBias(BiasBuilder):
    """MLP over distances (matrix kind, shared across layers).

    Args:
        dim, heads, causal: layer geometry.
        dynamic_bias_dim: MLP width (default max(dim // 4, 1)).
        dynamic_bias_depth: hidden layers (default 2; >= 1).
        dynamic_bias_log_distance: feed sign(n) log(|n| + 1) instead of n.
    Output: (1 or batch, heads, n_q, n_k) float32 (float64 in a float64 model).
    Raises:
        ValueError: depth < 1 or width < 1.
    """

    kind = "matrix"
    shared = True

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        causal: bool,
        dynamic_bias_dim: int | None = None,
        dynamic_bias_depth: int | None = None,
        dynamic_bias_log_distance: bool | None = None,
    ) -> None:
        super().__init__(dim=dim, heads=heads, causal=causal)
        width = max(dim // 4, 1) if dynamic_bias_dim is None else int(dynamic_bias_dim)
        depth = 2 if dynamic_bias_depth is None else int(dynamic_bias_depth)
        if width < 1 or depth < 1:
            raise ValueError(f"dynamic_bias_dim and dynamic_bias_depth must be >= 1, got {width}, {depth}")
        self.log_distance = bool(dynamic_bias_log_distance)
        layers: list[nn.Module] = [nn.Linear(1, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, heads))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor, q_pos: Tensor, k_pos: Tensor, **_) -> Tensor:
        distance = query_minus_key(q_pos, k_pos)
        lo, hi = int(distance.min()), int(distance.max())
        grid = torch.arange(lo, hi + 1, device=distance.device,
                            dtype=torch.promote_types(self.mlp[0].weight.dtype, torch.float32))[:, None]
        if self.log_distance:
            grid = grid.sign() * torch.log(grid.abs() + 1)
        per_distance = self.mlp(grid.to(self.mlp[0].weight.dtype))  # (hi - lo + 1, heads)
        per_distance = per_distance.to(torch.promote_types(per_distance.dtype, torch.float32))  # float64 stays
        return heads_first(per_distance[distance - lo])
