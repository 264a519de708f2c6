"""The data-dependent forget gate of the Forgetting Transformer (FoX).

Lin, Nikishin, He, Courville, "Forgetting Transformer: Softmax Attention with a
Forget Gate", ICLR 2025, arXiv 2503.02130, eq. (4)-(6); x-transformers calls it
"data-dependent ALiBi". One scalar gate per head and token, from the attention
layer's normed input x_t:

    log f_t = logsigmoid(w_h . x_t + b_h) / divisor
    D_ij    = sum_{l=j+1..i} log f_l = c_i - c_j,   c = cumsum(log f)

Bidirectional layers (Encoder) get a second gate g_t for the upper triangle,
D_ij = r_j - r_i with r = cumsum(log g). The gates are computed in float32 with
logsigmoid directly (stable for very negative logits); pad tokens get log f = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xforget.nn.bias.registry import BiasBuilder, DecayGates, mask_gate, register_bias


@register_bias("fox")
class ForgetGate(BiasBuilder):
    """FoX forget gate as a decay bias.

    Args:
        dim, heads, causal: layer geometry; a bidirectional layer has 2*heads gates.
        forget_gate_divisor: positive float dividing log f (x-transformers'
            ``post_log_scale`` = 1/divisor); 1, 8 or 16 are the usual values.
        forget_gate_bias_init: initial gate bias b_h. 0 (FoX paper) starts with
            f ~ 0.5, strong decay; 5 (x-transformers) starts with f = sigmoid(5) ~ 0.993
            at divisor 1, and f = sigmoid(5) ** (1 / divisor) ~ 0.9992 at divisor 8.
    Output: :class:`DecayGates`, log gates (batch, heads, n) float32 <= 0.
    Raises:
        ValueError: non-positive divisor.
    """

    kind = "decay"

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        causal: bool,
        forget_gate_divisor: float = 1.0,
        forget_gate_bias_init: float = 0.0,
    ) -> None:
        super().__init__(dim=dim, heads=heads, causal=causal)
        if not forget_gate_divisor > 0:
            raise ValueError(f"forget_gate_divisor must be > 0 (usually 1, 8 or 16), got {forget_gate_divisor}")
        self.divisor = float(forget_gate_divisor)
        self.to_gate_logits = nn.Linear(dim, heads * (1 if causal else 2))
        nn.init.constant_(self.to_gate_logits.bias, forget_gate_bias_init)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> DecayGates:
        logits = self.to_gate_logits(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).transpose(1, 2)  # (b, h or 2h, n), >= fp32
        log_gates = mask_gate(F.logsigmoid(logits) / self.divisor, mask)
        if self.causal:
            return DecayGates(log_fgate=log_gates)
        log_fgate, log_bgate = log_gates.chunk(2, dim=1)
        return DecayGates(log_fgate=log_fgate, log_bgate=log_bgate)
