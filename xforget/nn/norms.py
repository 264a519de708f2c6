"""Normalisation layers, by name (``layernorm``, ``rmsnorm``, ``scalenorm``), the
per-head RMSNorm used inside attention, and where norms sit in a residual branch.

Norm placement (``norm_style``), for a sublayer f and residual stream x:

* ``pre``      (Xiong et al. 2020, arXiv 2002.04745): x + f(norm(x)); a final norm
  after the last layer.
* ``post``     (the original Transformer, Vaswani et al. 2017): norm(x + f(x)); no
  final norm.
* ``sandwich`` (CogView, Ding et al. 2021, arXiv 2105.13290): x + norm2(f(norm1(x)));
  a final norm after the last layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_STYLES = ("pre", "post", "sandwich")


class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar 2019, arXiv 1910.05895): g * x / ||x||, one learned scalar g.

    Input (..., dim) float; output the same shape and dtype. g starts at sqrt(dim)
    (so the output has unit RMS).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.tensor(dim**0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467): x / rms(x) * weight.

    rms(x) = ||x|| / sqrt(dim), computed as ``F.normalize(x) * sqrt(dim)`` (no eps
    inside the root; a zero vector stays zero). Input (..., dim); output the same
    shape and dtype. ``weight`` (dim,) starts at 1.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.weight


class _HeadNorm(nn.Module):
    """Base of the per-head norms: each head's d channels are l2-normalised, then scaled
    per head and channel (:meth:`rescale`).

    Args:
        heads: number of heads h.
        dim_head: channels per head d.
    Input (batch, h, n, d); output the same shape and dtype.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.rescale(F.normalize(x, dim=-1))

    def rescale(self, unit: Tensor) -> Tensor:
        """unit-norm heads (batch, h, n, d) -> the normed output."""
        raise NotImplementedError


class HeadRMSNorm(_HeadNorm):
    """RMSNorm over the channels of each head with one gain vector *per head* (not shared).

    Used for QK-norm (Henry et al. 2020, arXiv 2010.04245; Dehghani et al. 2023,
    arXiv 2302.05442) and the FoX Pro per-head output norm (Lin et al. 2025,
    arXiv 2503.02130, section 4.2):

        y[h] = x[h] / rms(x[h]) * (1 + gamma[h])

    The gain is stored as an offset ``gamma`` (heads, dim_head) starting at 0
    (the x-transformers layout), so weight decay on this 2-d parameter pulls
    the norm towards the identity gain rather than towards zero.
    """

    def __init__(self, heads: int, dim_head: int) -> None:
        super().__init__()
        self.scale = dim_head**0.5
        self.gamma = nn.Parameter(torch.zeros(heads, dim_head))

    @property
    def gain(self) -> Tensor:
        """The effective per-head gain 1 + gamma, (heads, dim_head)."""
        return 1.0 + self.gamma

    def rescale(self, unit: Tensor) -> Tensor:
        return unit * self.scale * self.gain[:, None, :].to(unit.dtype)


class HeadL2Norm(_HeadNorm):
    """l2 normalisation of each head's channels times a learned per-head, per-channel scale.

    The qk-norm of cosine-sim attention (Henry et al. 2020, arXiv 2010.04245) in
    x-transformers' ``attn_qk_norm`` + ``attn_qk_norm_dim_scale`` form:

        y[h] = x[h] / ||x[h]||_2 * s[h]          s initialised to dim_head ** 0.25

    so at initialisation q.k / sqrt(d) is the cosine similarity of q and k.
    """

    def __init__(self, heads: int, dim_head: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((heads, dim_head), dim_head**0.25))

    def rescale(self, unit: Tensor) -> Tensor:
        return unit * self.scale[:, None, :].to(unit.dtype)


NORMS = {
    "layernorm": lambda dim: nn.LayerNorm(dim),
    "rmsnorm": RMSNorm,
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
