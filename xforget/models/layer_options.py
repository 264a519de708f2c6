"""The options of a layer stack, declared once: :class:`LayerOptions`.

``LayerOptions`` is what :class:`~xforget.models.layers.AttentionLayers` (and so
``Decoder``, ``Encoder``, ``CrossAttender``) is built from: the attention options
it inherits from :class:`~xforget.nn.attention_options.AttentionOptions` (passed down to
every attention layer as they are) plus the stack's own. It is made in one of two
places, both here:

* :func:`layer_options` -- from keywords (x-transformers aliases translated by
  :mod:`xforget.models.aliases`), for ``Decoder(dim, depth, heads, **keywords)``;
* :func:`config_layer_options` -- from a :class:`~xforget.models.config.ModelConfig`,
  whose layer fields have the same names.

:func:`xforget.models.validate.check_options` validates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from xforget.models.aliases import translate_x_transformers_kwargs
from xforget.models.config import _WRAPPER_KEYS, ModelConfig
from xforget.nn.attention_options import AttentionOptions


@dataclass(frozen=True, kw_only=True)
class LayerOptions(AttentionOptions):
    """Every option of a layer stack: :class:`~xforget.nn.attention_options.AttentionOptions` plus these.

    Attributes:
        dim: model width.
        depth: number of blocks (repetitions of the layer pattern).
        heads: attention heads (must divide dim unless dim_head is given).
        position: scheme name or list of names (``none``, ``absolute``, ``sinusoidal``,
            ``rotary``, and every registered bias: ``alibi``, ``t5``, ``dynamic``, ``fox``,
            ``fox_per_row``, ...); see :mod:`xforget.models.positions`.
        ff_mult, ff_activation: feed-forward width multiplier and activation
            (gelu, relu, relu2, silu, swiglu, geglu).
        norm: layernorm, rmsnorm or scalenorm; norm_style: pre, post or sandwich.
        ff_dropout: feed-forward dropout overriding ``dropout``, or None.
        value_residual, value_residual_mix: ResFormer value residual ("learned" or "fixed").
        layer_pattern: the pattern of one block over "a", "c", "f" (None: "af", "acf" with cross_attend).
        cross_attend: add cross-attention to a context (default pattern "acf").
        context_dim: width of the context (None: dim).
    """

    dim: int
    depth: int
    heads: int
    position: str | Sequence[str] = "none"
    ff_mult: float = 4
    ff_activation: str = "gelu"
    norm: str = "layernorm"
    norm_style: str = "pre"
    ff_dropout: float | None = None
    value_residual: bool = False
    value_residual_mix: str = "learned"
    layer_pattern: str | None = None
    cross_attend: bool = False
    context_dim: int | None = None

    @property
    def head_dim(self) -> int:
        """Channels per head: ``dim_head``, else dim // heads."""
        return self.dim // self.heads if self.dim_head is None else self.dim_head

    @property
    def feedforward_dropout(self) -> float:
        """Dropout of the feed-forward activations: ``ff_dropout``, else ``dropout``."""
        return self.dropout if self.ff_dropout is None else self.ff_dropout


LAYER_OPTION_NAMES = tuple(f.name for f in fields(LayerOptions))


def layer_options(owner: str, keywords: dict[str, Any]) -> LayerOptions:
    """The options named by ``keywords`` (xforget or x-transformers names).

    Args:
        owner: the class being built, for messages (``"Decoder"``).
        keywords: dim, depth, heads and any other option.
    Raises:
        TypeError: an unknown keyword, listing the valid ones.
        ValueError: an alias conflicting with its xforget name (:mod:`xforget.models.aliases`).
    """
    keywords = translate_x_transformers_kwargs(keywords)
    unknown = sorted(set(keywords) - set(LAYER_OPTION_NAMES))
    if unknown:
        raise TypeError(f"{owner}: unknown option(s) {unknown}; valid options: {list(LAYER_OPTION_NAMES)} "
                        "(plus x-transformers aliases)")
    return LayerOptions(**keywords)


def config_layer_options(cfg: ModelConfig) -> LayerOptions:
    """The layer options of a model config: its layer fields, then ``extra`` (aliases allowed).

    Raises:
        TypeError: an unknown key in ``extra``, or one that is a ModelConfig field.
    """
    owner = "Encoder" if cfg.kind == "encoder" else "Decoder"
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in {"kind", "extra", *_WRAPPER_KEYS}}
    if values["position"] is not None and not isinstance(values["position"], str):  # a Hydra list
        values["position"] = list(values["position"])
    extra = dict(cfg.extra or {})
    shadowed = sorted(set(extra) & {f.name for f in fields(cfg)})
    if shadowed:
        raise TypeError(f"{owner}: model.extra repeats ModelConfig field(s) {shadowed}; set model.<name> instead")
    return layer_options(owner, {**values, **extra})
