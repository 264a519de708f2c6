"""Normalisation layers, by name: ``layernorm``, ``rmsnorm``, ``scalenorm``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar 2019, arXiv 1910.05895): g * x / ||x||, one learned scalar g."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.tensor(dim**0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)


NORMS = {
    "layernorm": lambda dim: nn.LayerNorm(dim),
    "rmsnorm": lambda dim: nn.RMSNorm(dim),
    "scalenorm": ScaleNorm,
}


def make_norm(name: str, dim: int) -> nn.Module:
    """Build the norm called ``name`` over the last dimension ``dim``.

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; valid norms: {sorted(NORMS)}")
    return NORMS[name](dim)
