"""Position-wise feed-forward blocks: GELU, ReLU^2 and the GLU variants.

GLU variants (Shazeer 2020, arXiv 2002.05202): ``swiglu`` = SiLU(xW) * xV,
``geglu`` = GELU(xW) * xV. ReLU^2: So et al. 2021 (Primer, arXiv 2109.08668).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "relu2": lambda t: F.relu(t).square(),
    "silu": F.silu,
}
_GLU = {"swiglu": F.silu, "geglu": F.gelu}


def feedforward_activations() -> list[str]:
    """Valid ``ff_activation`` names."""
    return sorted([*_ACTIVATIONS, *_GLU])


class FeedForward(nn.Module):
    """x (batch, n, dim) -> (batch, n, dim) through an inner width of dim * mult.

    Args:
        dim: model width.
        mult: inner width multiplier.
        activation: one of :func:`feedforward_activations`.
        dropout: dropout on the inner activations.
    Raises:
        ValueError: unknown activation.
    """

    def __init__(self, dim: int, mult: float = 4, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS and activation not in _GLU:
            raise ValueError(f"unknown ff_activation {activation!r}; valid: {feedforward_activations()}")
        inner = int(dim * mult)
        self.glu = activation in _GLU
        self.act = _GLU.get(activation) or _ACTIVATIONS[activation]
        self.proj_in = nn.Linear(dim, inner * (2 if self.glu else 1))
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj_in(x)
        if self.glu:
            h, gate = h.chunk(2, dim=-1)
            h = h * self.act(gate)
        else:
            h = self.act(h)
        return self.proj_out(self.dropout(h))
