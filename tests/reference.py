"""Plain float64 reference implementations written for the tests (independent of xforget's kernels)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def forget_gate_bias_f64(log_f: Tensor, log_g: Tensor | None, causal: bool) -> Tensor:
    """D (b, h, n, n) by explicit sums: D_ij = sum_{l=j+1..i} log f_l (j <= i),
    sum_{l=i..j-1} log g_l (j > i) when bidirectional, -inf above the diagonal when causal."""
    log_f = log_f.double()
    b, h, n = log_f.shape
    D = torch.zeros(b, h, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if j <= i:
                D[..., i, j] = log_f[..., j + 1 : i + 1].sum(-1)
            elif causal:
                D[..., i, j] = -math.inf
            else:
                D[..., i, j] = log_g.double()[..., i + 1 : j + 1].sum(-1)
    return D


def attention_f64(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v in float64; key_mask (b, n_k) excludes keys; empty rows -> 0."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias.double()
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], -math.inf)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


def alibi_slopes_paper(heads: int) -> list[float]:
    """ALiBi slopes written out from the paper (Press et al. 2022, section 3):
    n a power of two: 2^(-8/n * k), k = 1..n. Otherwise p = largest power of two below n,
    the p-head slopes followed by the odd-indexed (1st, 3rd, ...) slopes of the 2p-head set."""
    def geometric(n):
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]
    p = 1
    while p * 2 <= heads:
        p *= 2
    if p == heads:
        return geometric(heads)
    return geometric(p) + [s for idx, s in enumerate(geometric(2 * p)) if idx % 2 == 0][: heads - p]
