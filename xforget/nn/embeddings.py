"""Token and absolute position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TokenEmbedding(nn.Module):
    """Token ids (batch, n) int64 -> (batch, n, dim).

    ``l2norm=True`` (x-transformers' ``l2norm_embed``, from "Transformers without Tears" / PaLM-style
    embedding normalisation): each embedding is divided by its L2 norm, and the table starts small (std
    1e-5, as there).

    Raises:
        ValueError: a token id outside [0, num_tokens), naming the bad value.
    """

    def __init__(self, num_tokens: int, dim: int, l2norm: bool = False) -> None:
        super().__init__()
        self.num_tokens, self.l2norm = num_tokens, l2norm
        self.emb = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.emb.weight, std=1e-5 if l2norm else 0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"token ids must be an integer tensor, got dtype {tokens.dtype}")
        # the range check reads two numbers back from the tensor (a graph break under torch.compile);
        # compiled training feeds ids its data loader already bounded by the vocabulary, so it is skipped there
        if tokens.numel() and not torch.compiler.is_compiling():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.num_tokens:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} out of range: valid ids are 0..{self.num_tokens - 1} (num_tokens)")
        out = self.emb(tokens.long())
        return F.normalize(out, dim=-1) if self.l2norm else out


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute position embedding, scaled by dim^-0.5 (x-transformers' convention); with
    ``l2norm=True`` (``l2norm_embed``) unscaled and divided by its L2 norm instead, as there.

    Input positions (n,) or (batch, n) int64; output (..., n, dim).

    Raises:
        ValueError: a position >= max_seq_len (the table has no row for it).
    """

    def __init__(self, dim: int, max_seq_len: int, l2norm: bool = False) -> None:
        super().__init__()
        self.max_seq_len, self.l2norm = max_seq_len, l2norm
        self.scale = 1.0 if l2norm else dim**-0.5
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, positions: Tensor) -> Tensor:
        if positions.numel() and int(positions.max()) >= self.max_seq_len:
            raise ValueError(
                f"position {int(positions.max())} is beyond the absolute position table (max_seq_len="
                f"{self.max_seq_len}); use a shorter sequence, a larger max_seq_len, or a relative scheme "
                "(rotary, alibi, fox)"
            )
        out = self.emb(positions) * self.scale
        return F.normalize(out, dim=-1) if self.l2norm else out


class ScaledSinusoidalEmbedding(nn.Module):
    """Sinusoidal absolute positions with one learned scale (the ``sinusoidal`` scheme).

    Vaswani et al. 2017 (section 3.5) sinusoids, laid out as [sin | cos] halves,
    times a learned scalar starting at dim^-0.5 (the "scaled sinusoidal" variant of
    Hua et al. 2022, arXiv 2202.10447, section 2, as in x-transformers):

        emb(p) = scale * [sin(p * w_0..w_{d/2-1}), cos(p * w_0..w_{d/2-1})],  w_i = theta^(-i / (d/2))

    No table, so any position works. Angles are computed in float32.

    Args:
        dim: model width (even).
        theta: frequency base (10000).
    Input positions (n,) or (batch, n) int64; output (..., n, dim) float32.
    Raises:
        ValueError: odd dim.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"the sinusoidal position embedding needs an even model dim, got dim={dim}")
        self.scale = nn.Parameter(torch.ones(1) * dim**-0.5)
        half = dim // 2
        self.register_buffer("inv_freq", theta ** -(torch.arange(half).float() / half), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        angles = positions.float()[..., None] * self.inv_freq
        return torch.cat((angles.sin(), angles.cos()), dim=-1) * self.scale
