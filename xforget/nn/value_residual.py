"""Value residual learning (ResFormer; Zhou et al. 2024, arXiv 2410.17897, eq. 4).

Every self-attention layer after the first mixes its values with the first
layer's values. Convention (the same as x-transformers), stated once here:

    v = lerp(v_1, v, lambda) = v_1 + lambda * (v - v_1)

so lambda weights the layer's *own* values. ``"fixed"``: lambda = 0.5.
``"learned"``: lambda = sigmoid(w_h . x_t + b_h) per token and (KV) head,
from the attention layer's normed input x_t.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VALUE_RESIDUAL_MIXES = ("fixed", "learned")


class ValueResidualMix(nn.Module):
    """Mix a layer's values with the first layer's values.

    Args:
        dim: model width (input of the learned mix).
        kv_heads: number of key/value heads (the mix is per KV head, so it
            broadcasts with grouped-query attention).
        mix: "fixed" (lambda = 0.5) or "learned".
    Raises:
        ValueError: unknown mix.
    """

    def __init__(self, dim: int, kv_heads: int, mix: str = "learned") -> None:
        super().__init__()
        if mix not in VALUE_RESIDUAL_MIXES:
            raise ValueError(f"unknown value_residual_mix {mix!r}; valid: {list(VALUE_RESIDUAL_MIXES)}")
        self.mix = mix
        self.to_lambda = nn.Linear(dim, kv_heads) if mix == "learned" else None

    def mix_weight(self, x: Tensor) -> Tensor | float:
        """lambda: a float, or (batch, kv_heads, n, 1) in x's dtype."""
        if self.to_lambda is None:
            return 0.5
        return torch.sigmoid(self.to_lambda(x)).transpose(1, 2)[..., None]

    def forward(self, v: Tensor, first_v: Tensor, x: Tensor) -> Tensor:
        """v, first_v: (batch, kv_heads, n, dim_head); x: (batch, n, dim). Returns the mixed values."""
        return first_v.lerp(v, self.mix_weight(x)) if self.to_lambda is not None else first_v.lerp(v, 0.5)
