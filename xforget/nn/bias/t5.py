"""T5 relative position bias: one learned scalar per head and distance bucket.

Raffel et al., "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", JMLR 2020 (arXiv 1910.10683), section 2.1; the bucket
function is mesh-tensorflow's ``_relative_position_bucket``. With n = i - j
(query minus key position), B = num_buckets, M = max_distance:

* bidirectional: B <- B / 2; keys after the query (n < 0) use buckets B..2B-1;
  n <- |n|. Causal: n <- max(n, 0).
* e = B / 2 exact buckets: bucket(n) = n for n < e,
  else min(B - 1, e + floor(log(n / e) / log(M / e) * (B - e))).

The bias of (i, j) in head h is ``table[bucket(i - j), h]``; the table is shared
by all layers of a stack (as in T5). x-transformers multiplies its table by
sqrt(dim_head); ours is unscaled (the bridge folds the factor into the weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from xforget.nn.bias.registry import BiasBuilder, heads_first, query_minus_key, register_bias


def t5_bucket(distance: Tensor, *, causal: bool, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """T5 bucket of each signed distance i - j (int64 tensor of any shape) -> int64, same shape.

    Values lie in 0..num_buckets-1.
    """
    n = distance.long()
    ret = torch.zeros_like(n)
    if not causal:
        num_buckets //= 2
        ret = ret + (n < 0).long() * num_buckets
        n = n.abs()
    else:
        n = n.clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_ratio = torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return ret + torch.where(is_small, n, large)


@register_bias("t5")
class T5RelativeBias(BiasBuilder):
    """Bucketed relative position bias (matrix kind, one table shared across layers).

    Args:
        dim, heads, causal: layer geometry.
        num_buckets: number of buckets (default 32; >= 2, even when bidirectional).
        max_distance: distance at which the log-spaced buckets end (default 128;
            > num_buckets / 2, or / 4 when bidirectional).
    Output: (1 or batch, heads, n_q, n_k) float32 (float64 in a float64 model).
    Raises:
        ValueError: invalid num_buckets / max_distance.
    """

    kind = "matrix"
    shared = True

    def __init__(
        self, *, dim: int, heads: int, causal: bool, num_buckets: int | None = None, max_distance: int | None = None
    ) -> None:
        super().__init__(dim=dim, heads=heads, causal=causal)
        self.num_buckets = 32 if num_buckets is None else int(num_buckets)
        self.max_distance = 128 if max_distance is None else int(max_distance)
        per_side = self.num_buckets if causal else self.num_buckets // 2
        if per_side < 2 or (not causal and self.num_buckets % 2):
            raise ValueError(
                f"num_buckets={num_buckets} is too small: need >= 2 buckets per direction (an even number >= 4 "
                "when bidirectional)"
            )
        if self.max_distance <= per_side // 2:
            raise ValueError(
                f"max_distance={self.max_distance} must exceed the {per_side // 2} exact buckets (num_buckets={self.num_buckets})"
            )
        self.table = nn.Embedding(self.num_buckets, heads)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, x: Tensor, q_pos: Tensor, k_pos: Tensor, **_) -> Tensor:
        buckets = t5_bucket(
            query_minus_key(q_pos, k_pos), causal=self.causal, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        table = self.table(buckets)  # fp32 at least, float64 in a float64 model (its gradients keep their digits)
        return heads_first(table.to(torch.promote_types(table.dtype, torch.float32)))
