"""Per-row forget gates (x-transformers' ``data_dependent_alibi_per_row``).

A FoX variant (Lin et al., arXiv 2503.02130) in which the forget gate of token t
is not one number but depends on the query i that looks back over it: each
head projects the layer input to small queries and keys (dimension d_s,
default 8) and

    g_it   = logsigmoid(qs_i . ks_t / sqrt(d_s)) / divisor          (t < i, real tokens; else 0)
    D_ij   = sum_{t=j..i-1} g_it                                       (D_ii = 0)

i.e. a reverse cumulative sum along each row (the x-transformers convention:
key t's gate, seen from query i, discounts t itself and everything before it).
The bias is genuinely (n_q, n_k)-shaped, so this is a "matrix" builder; the
rows are computed in query blocks so the intermediate tiles stay small. Causal
only. The small keys of every token are kept in the KV cache (``key_state``),
so cached decoding is exact. Pad keys get g = 0 (they do not forget). With packed
documents and memory tokens (``visible``), tokens a query cannot see (other documents)
get g = 0 too, so D from a memory key sums the memory and the query's own document only,
as when the document runs alone behind the memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xforget.nn.bias.registry import BiasBuilder, register_bias

TILE_ELEMENTS = 1 << 22  # about 16 MB of float32 per query block


@register_bias("fox_per_row")
class PerRowForgetGate(BiasBuilder):
    """Per-row data-dependent forget gates (matrix kind, per layer, causal only).

    Args:
        dim, heads, causal: layer geometry (causal must be True).
        per_row_dim_head: d_s, channels of the small gate queries/keys (default 8).
        forget_gate_divisor: divides the log gates (x-transformers' post_log_scale = 1 / divisor).
    Output: (batch, heads, n_q, n_k) float32 (float64 in a float64 model), <= 0 at visible keys.
    Raises:
        ValueError: causal=False, d_s < 1 or a non-positive divisor.
    """

    kind = "matrix"

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        causal: bool,
        per_row_dim_head: int | None = None,
        forget_gate_divisor: float = 1.0,
    ) -> None:
        super().__init__(dim=dim, heads=heads, causal=causal)
        if not causal:
            raise ValueError("position 'fox_per_row' is causal only; use it in a Decoder, or use 'fox' in an Encoder")
        self.dim_small = 8 if per_row_dim_head is None else int(per_row_dim_head)
        if self.dim_small < 1:
            raise ValueError(f"per_row_dim_head must be >= 1, got {per_row_dim_head}")
        if not forget_gate_divisor > 0:
            raise ValueError(f"forget_gate_divisor must be > 0, got {forget_gate_divisor}")
        self.divisor = float(forget_gate_divisor)
        self.to_qk = nn.Linear(dim, 2 * heads * self.dim_small, bias=False)  # layout (qk, heads, d_s)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _ = x.shape
        qk = self.to_qk(x).view(b, n, 2, self.heads, self.dim_small).permute(2, 0, 3, 1, 4)
        return qk[0], qk[1]  # (b, h, n, d_s) each

    def key_state(self, x: Tensor) -> Tensor:
        """Small gate keys (batch, heads, n, d_s) of the new tokens."""
        return self._split(x)[1]

    def forward(
        self, x: Tensor, q_pos: Tensor, k_pos: Tensor, *, key_state: Tensor | None = None,
        key_mask: Tensor | None = None, visible: Tensor | None = None,
    ) -> Tensor:
        """(batch, heads, n_q, n_k) float32 bias (float64 in a float64 model); ``visible``: (batch, 1, n_q, n_k) bool keys each query
        may see (packed documents with memory tokens), or None (all earlier keys)."""
        q_small, k_new = self._split(x)
        keys = k_new if key_state is None else key_state
        b, h, n_q, _ = q_small.shape
        n_k = keys.shape[2]
        offset = n_k - n_q  # query m sits at key index m + offset
        scale = self.dim_small**-0.5
        key_idx = torch.arange(n_k, device=x.device)
        block = max(1, min(n_q, TILE_ELEMENTS // max(1, b * h * n_k)))
        ct = torch.promote_types(q_small.dtype, torch.float32)  # fp32 at least; float64 in a float64 model
        rows = []
        for start in range(0, n_q, block):
            q_blk = q_small[:, :, start : start + block].to(ct)
            g = F.logsigmoid(q_blk @ keys.to(ct).transpose(-1, -2) * scale) / self.divisor  # (b, h, B, n_k)
            q_idx = torch.arange(start, start + q_blk.shape[2], device=x.device) + offset
            valid = (key_idx[None, :] < q_idx[:, None])[None, None]  # t < i
            if key_mask is not None:
                valid = valid & key_mask[:, None, None, :]
            if visible is not None:
                valid = valid & visible[:, :, start : start + q_blk.shape[2]]
            g = torch.where(valid, g, 0.0)
            rows.append(g.flip(-1).cumsum(-1).flip(-1))  # D_ij = sum_{t >= j} g_it
        return torch.cat(rows, dim=2)
