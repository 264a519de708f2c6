"""The options of an attention layer, declared once: :class:`AttentionOptions`.

One frozen dataclass holds what every attention layer of a stack is built with
(the layer stack's :class:`~xforget.models.layer_options.LayerOptions` extends it, and
passes itself down to each :class:`~xforget.nn.attention.Attention`). Field names
are the stack's keyword names, which are also the :class:`~xforget.models.config.ModelConfig`
field names.

The positional-scheme options are fields here too, each declared with the
scheme(s) that read it (:func:`scheme_option_names`): a bias builder takes the
ones its constructor names (:meth:`xforget.nn.bias.BiasBuilder.from_options`), the
stack builds the rotary embedding from the ``rotary_*`` ones, and the model
validation (:mod:`xforget.models.validate`) reads the declaration to reject an
option whose scheme is not in ``position``.

This module is pure data plus :func:`check_attention_options`, the checks that an
attention layer needs on its own (the model validation runs them too).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

QK_NORMS = (False, True, "l2")  # qk_norm values: off, per-head RMSNorm, l2 + learned scale


def _scheme_option(default: Any, *schemes: str) -> Any:
    """A dataclass field read only by the positional scheme(s) named (kept in the field's metadata)."""
    return field(default=default, metadata={"schemes": schemes})


@dataclass(frozen=True)
class AttentionOptions:
    """Options of one attention layer (the same object serves every layer of a stack).

    Attributes:
        dim_head: channels per head (None: dim // heads).
        kv_heads: key/value heads, dividing heads (None: heads; 1 = multi-query).
        num_mem_kv: learned memory key/values per KV head (never decayed).
        qk_norm: False; True = per-head RMSNorm of queries and keys; "l2" = l2-normalised
            queries and keys times a learned per-head, per-channel scale (x-transformers'
            ``attn_qk_norm`` with ``attn_qk_norm_dim_scale``; cosine-sim attention, Henry et al. 2020).
        output_gate: multiply the attention output by sigmoid(W_g x + b_g) per channel.
        kv_shift: FoX Pro data-dependent token shift of keys and values (self-attention only).
        output_norm: per-head RMSNorm of the attention output.
        softclamp_logits: c > 0 for logits <- c tanh(logits / c), or None (off).
        dropout: default dropout probability in [0, 1) (attention weights; in a stack also
            feed-forward activations).
        attn_dropout: attention-weight dropout overriding ``dropout``, or None.
        attn_backend: attention kernel override passed to :func:`xforget.ops.attend`, or None.
        attn_prune: adaptive computation pruning of decayed keys (:mod:`xforget.ops.prune`);
            False computes every key.
        attn_prune_eps: pruned attention mass per row, in (0, 1).

    Positional-scheme options (left at their default when the scheme is not used):
        forget_gate_divisor, forget_gate_bias_init: FoX gate (fox; the divisor also fox_per_row).
        alibi_num_heads: ALiBi on the first N heads only (None: all).
        rotary_dim, rotary_base, rotary_xpos, rotary_xpos_scale_base: rotary (and xPos).
        num_buckets, max_distance: T5 buckets (None: 32, 128).
        dynamic_bias_dim, dynamic_bias_depth, dynamic_bias_log_distance: dynamic bias MLP
            (None: dim // 4, 2, False).
        per_row_dim_head: small gate head dim of fox_per_row (None: 8).
    """

    dim_head: int | None = None
    kv_heads: int | None = None
    num_mem_kv: int = 0
    qk_norm: bool | str = False
    output_gate: bool = False
    kv_shift: bool = False
    output_norm: bool = False
    softclamp_logits: float | None = None
    dropout: float = 0.0
    attn_dropout: float | None = None
    attn_backend: str | None = None
    attn_prune: bool = True
    attn_prune_eps: float = 1e-6
    forget_gate_divisor: float = _scheme_option(1.0, "fox", "fox_per_row")
    forget_gate_bias_init: float = _scheme_option(0.0, "fox")
    alibi_num_heads: int | None = _scheme_option(None, "alibi")
    rotary_dim: int | None = _scheme_option(None, "rotary")
    rotary_base: float = _scheme_option(10000.0, "rotary")
    rotary_xpos: bool = _scheme_option(False, "rotary")
    rotary_xpos_scale_base: float = _scheme_option(512.0, "rotary")
    num_buckets: int | None = _scheme_option(None, "t5")
    max_distance: int | None = _scheme_option(None, "t5")
    dynamic_bias_dim: int | None = _scheme_option(None, "dynamic")
    dynamic_bias_depth: int | None = _scheme_option(None, "dynamic")
    dynamic_bias_log_distance: bool = _scheme_option(False, "dynamic")
    per_row_dim_head: int | None = _scheme_option(None, "fox_per_row")

    @property
    def attention_dropout(self) -> float:
        """Dropout of the attention weights: ``attn_dropout``, else ``dropout``."""
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    def scheme_values(self) -> dict[str, Any]:
        """The positional-scheme options by name (what a bias builder picks its own from)."""
        return {name: getattr(self, name) for name in scheme_option_names()}


def scheme_option_names() -> dict[str, tuple[str, ...]]:
    """Each positional-scheme option of :class:`AttentionOptions` -> the schemes that read it."""
    return {f.name: f.metadata["schemes"] for f in fields(AttentionOptions) if "schemes" in f.metadata}


def check_attention_options(options: AttentionOptions, heads: int, *, prefix: str = "") -> None:
    """The checks an attention layer's options need on their own.

    Args:
        options: the options (any :class:`AttentionOptions`, e.g. a stack's ``LayerOptions``).
        heads: the layer's query heads.
        prefix: prepended to field names in messages (``"model."`` for configs).
    Raises:
        ValueError: kv_heads not dividing heads, negative num_mem_kv, an unknown qk_norm,
            qk_norm='l2' with memory key/values, softclamp_logits <= 0, or a dropout
            outside [0, 1); the message names the field and the fix.
    """
    o = options
    f = lambda name: f"{prefix}{name}"
    if o.kv_heads is not None and (o.kv_heads < 1 or heads % o.kv_heads):
        ok = [k for k in range(1, heads + 1) if heads % k == 0]
        raise ValueError(f"{f('kv_heads')}={o.kv_heads} must divide {f('heads')}={heads}; use one of {ok} (1 = multi-query)")
    if o.num_mem_kv < 0:
        raise ValueError(f"{f('num_mem_kv')}={o.num_mem_kv} must be >= 0 (0 = no memory key/values)")
    if o.qk_norm not in QK_NORMS:
        raise ValueError(f"{f('qk_norm')}={o.qk_norm!r} is not a qk-norm; valid: false, true (per-head RMSNorm), "
                         "'l2' (l2-normalised q and k with a learned scale, x-transformers' attn_qk_norm)")
    if o.qk_norm == "l2" and o.num_mem_kv:
        raise ValueError(f"{f('qk_norm')}='l2' with {f('num_mem_kv')}={o.num_mem_kv} is not supported; "
                         "use qk_norm=true (RMSNorm) with memory key/values")
    if o.softclamp_logits is not None and not o.softclamp_logits > 0:
        raise ValueError(f"{f('softclamp_logits')}={o.softclamp_logits} must be > 0 (e.g. 50), or null for off")
    for name in ("dropout", "attn_dropout"):
        value = getattr(o, name)
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"{f(name)}={value} must be in [0, 1)")
