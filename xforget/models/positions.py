"""Positional schemes by name: what ``position=`` accepts.

A scheme is one of four kinds:

* ``"none"``      -- no positional information (NoPE; causal masking alone).
* ``"embedding"`` -- added to the token embedding (``absolute``: learned table;
  ``sinusoidal``: scaled sinusoids, see :mod:`xforget.nn.embeddings`).
* ``"rotary"``    -- rotates queries and keys (RoPE, Su et al. 2021, arXiv 2104.09864).
* ``"bias"``      -- an additive attention bias from the bias-builder registry
  (:mod:`xforget.nn.bias`); every registered builder is a scheme automatically.

``position`` may name one scheme or a list that combines them (at most one of
each kind), e.g. ``["fox", "rotary"]`` or ``["absolute", "alibi"]``. ``none``
only stands alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xforget.nn.bias import registered_biases

_NON_BIAS_SCHEMES = {"none": "none", "absolute": "embedding", "sinusoidal": "embedding", "rotary": "rotary"}


def position_schemes() -> dict[str, str]:
    """All valid scheme names mapped to their kind."""
    return {**_NON_BIAS_SCHEMES, **{name: "bias" for name in registered_biases()}}


@dataclass(frozen=True)
class PositionPlan:
    """What a layer stack needs for its positional schemes.

    Attributes:
        names: the scheme names, in the order given.
        embedding: name of the embedding scheme (added to token embeddings) or None.
        rotary: whether queries and keys are rotated.
        bias: name of the registered bias builder or None.
    """

    names: tuple[str, ...]
    embedding: str | None = None
    rotary: bool = False
    bias: str | None = None


def resolve_position(position: str | Sequence[str] | None) -> PositionPlan:
    """Validate ``position`` and sort its schemes by kind.

    Raises:
        ValueError: an unknown name (the message lists valid names), two
            schemes of the same kind (e.g. ``["alibi", "fox"]``), naming both,
            or ``none`` combined with another scheme.
    """
    if position is None:
        position = "none"
    names = (position,) if isinstance(position, str) else tuple(position)
    valid = position_schemes()
    by_kind: dict[str, str] = {}
    for name in names:
        if name not in valid:
            raise ValueError(f"unknown position scheme {name!r}; valid schemes: {sorted(valid)}")
        kind = valid[name]
        if kind == "none":
            other = next((n for n in names if n != "none"), None)
            if other is not None:
                raise ValueError(
                    f"position schemes 'none' and {other!r} cannot be combined: 'none' means no positional "
                    f"information; drop 'none' or use position={other!r}"
                )
            continue
        if kind in by_kind:
            raise ValueError(
                f"position schemes {by_kind[kind]!r} and {name!r} cannot be combined: both are {kind} schemes; "
                "pick one of them"
            )
        by_kind[kind] = name
    return PositionPlan(
        names=names,
        embedding=by_kind.get("embedding"),
        rotary="rotary" in by_kind,
        bias=by_kind.get("bias"),
    )
