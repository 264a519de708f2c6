"""Registry of attention-bias builders.

A bias builder turns a layer's input into the additive attention bias of one
positional scheme. Each builder declares its *kind*, and the attention core picks
the kernel from the kind alone (never from scheme names):

* ``"decay"``: the bias is D_ij = c_i - c_j with c = cumsum(log f) over keys
  (causal), plus D_ij = r_j - r_i above the diagonal with r = cumsum(log g) when
  bidirectional. The builder returns only the per-token log forget values
  ``log_fgate`` / ``log_bgate`` of shape (batch, heads, n) -- O(n) memory -- and
  the attention op folds them into a fused kernel (DESIGN.md section 3).
  Examples: the FoX forget gate, ALiBi (a constant gate, log f = -slope).
* ``"matrix"``: the bias is genuinely (heads, n_q, n_k)-shaped (T5 buckets, ...)
  and goes to the dense path.

Adding a scheme is one new module in this package that decorates its class with
:func:`register_bias`; nothing in the attention core changes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

BiasKind = Literal["decay", "matrix"]

_BIAS_BUILDERS: dict[str, type["BiasBuilder"]] = {}


@dataclass
class DecayGates:
    """Per-token log forget values of a decay bias.

    Attributes:
        log_fgate: (batch, heads, n) float32, <= 0. Forward (causal) gate.
        log_bgate: (batch, heads, n) float32, <= 0, or None. Backward gate of a
            bidirectional layer (upper triangle of the bias).
    """

    log_fgate: Tensor
    log_bgate: Tensor | None = None


class BiasBuilder(nn.Module):
    """Base class of registered bias builders.

    Subclasses set ``kind`` and implement ``forward``:

    * decay:  ``forward(x, mask) -> DecayGates`` with x (batch, n, dim) the
      attention layer's normed input and mask (batch, n) bool (True = real
      token) or None. Pad tokens must get log f = 0 (they do not forget).
    * matrix: ``forward(x, q_pos, k_pos, *, key_state=None, key_mask=None) -> Tensor``
      broadcastable to (batch, heads, n_q, n_k), float32. x is the normed input
      of the n_q new tokens (the queries, which are the last n_q keys); q_pos
      (n_q,) or (batch, n_q) and k_pos (n_k,) or (batch, n_k) are int64
      positions (real tokens count from 0 per row); key_mask (batch, n_k) bool
      or None; key_state is the concatenation over all keys of what
      :meth:`key_state` returned (kept in the KV cache), or None.

    Class attributes:
        kind: "decay" or "matrix".
        shared: True if one instance serves every layer of a stack (a position
            table such as T5's, shared across layers as in the T5 paper);
            False for per-layer, data-dependent builders.
    """

    kind: BiasKind
    name: str
    shared: bool = False

    def __init__(self, *, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.dim, self.heads, self.causal = dim, heads, causal

    def key_state(self, x: Tensor) -> Tensor | None:
        """Per-key features a matrix builder needs again at later decoding steps.

        x (batch, n, dim) -> (batch, heads, n, ...) concatenated along dim 2 in the
        cache, or None (the default: positions alone suffice).
        """
        return None

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword options (beyond dim/heads/causal) the builder accepts."""
        params = inspect.signature(cls.__init__).parameters
        return [p for p in params if p not in ("self", "dim", "heads", "causal")]

    @classmethod
    def from_options(cls, *, dim: int, heads: int, causal: bool, options: dict[str, Any]) -> "BiasBuilder":
        """Build from a model-wide options dict, taking only this builder's keys."""
        mine = {k: v for k, v in options.items() if k in cls.option_names() and v is not None}
        return cls(dim=dim, heads=heads, causal=causal, **mine)


def register_bias(name: str):
    """Class decorator: register a :class:`BiasBuilder` subclass under ``name``.

    Raises:
        ValueError: if the name is taken or the class declares no valid kind.
    """

    def decorate(cls: type[BiasBuilder]) -> type[BiasBuilder]:
        if name in _BIAS_BUILDERS:
            raise ValueError(f"bias builder {name!r} is already registered ({_BIAS_BUILDERS[name].__name__})")
        if getattr(cls, "kind", None) not in ("decay", "matrix"):
            raise ValueError(f"bias builder {cls.__name__} must set kind to 'decay' or 'matrix'")
        cls.name = name
        _BIAS_BUILDERS[name] = cls
        return cls

    return decorate


def get_bias_builder(name: str) -> type[BiasBuilder]:
    """Look up a registered bias builder class by name.

    Raises:
        KeyError: unknown name; the message lists the registered builders.
    """
    try:
        return _BIAS_BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown attention bias {name!r}; registered biases: {sorted(_BIAS_BUILDERS)}") from None


def registered_biases() -> dict[str, BiasKind]:
    """Map of registered bias name -> kind ("decay" or "matrix")."""
    return {name: cls.kind for name, cls in _BIAS_BUILDERS.items()}


def mask_gate(log_gate: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the log gate at pad tokens (they must not forget). mask: (b, n) bool."""
    if mask is None:
        return log_gate
    return log_gate.masked_fill(~mask[:, None, :], 0.0)


def query_minus_key(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """Signed distances i - j: q_pos (n_q,) or (b, n_q), k_pos (n_k,) or (b, n_k) -> (n_q, n_k) or (b, n_q, n_k)."""
    return q_pos[..., :, None] - k_pos[..., None, :]


def heads_first(bias: Tensor) -> Tensor:
    """(n_q, n_k, h) or (b, n_q, n_k, h) -> (1 or b, h, n_q, n_k)."""
    if bias.ndim == 3:
        bias = bias[None]
    return bias.permute(0, 3, 1, 2)


__all__ = ["BiasBuilder", "BiasKind", "DecayGates", "register_bias", "get_bias_builder", "registered_biases", "mask_gate",
           "query_minus_key", "heads_first"]
_ = torch  # re-exported types only
