"""The one validation of model options, run once before anything is built.

:func:`check_layer_options` checks a layer stack's :class:`~xforget.models.layer_options.LayerOptions`
as a whole -- geometry, scheme compatibility, option ranges; an attention layer's
own checks are :func:`xforget.nn.attention_options.check_attention_options`, which it runs
in turn. :func:`validate_model_config` checks the few fields of a
:class:`~xforget.models.config.ModelConfig` that are not layer options, then the
layer options it describes. Every error is a ``ValueError`` that names the field
(``model.<field>`` for configs, so the message can be pasted back as a
command-line override) and says how to fix it.
"""

from __future__ import annotations

from typing import Any

from xforget.models.config import ModelConfig, model_config_from_dict
from xforget.models.layer_options import LayerOptions, config_layer_options
from xforget.models.positions import PositionPlan, resolve_position
from xforget.nn.bias import registered_biases
from xforget.nn.feedforward import feedforward_activations
from xforget.nn.norms import NORM_STYLES, NORMS
from xforget.nn.attention_options import QK_NORMS, check_attention_options, scheme_option_names  # noqa: F401
from xforget.nn.value_residual import VALUE_RESIDUAL_MIXES
from xforget.ops import BACKENDS
from xforget.ops.fla import MISSING as FLA_MISSING, fla_available

LAYER_KINDS = {"a": "self-attention", "c": "cross-attention", "f": "feed-forward"}


def check_layer_options(options: LayerOptions, *, causal: bool, prefix: str = "") -> PositionPlan:
    """Validate a layer stack's options together; return the resolved position plan.

    Args:
        options: the stack's options.
        causal: whether the stack is causal (Decoder) or bidirectional.
        prefix: prepended to field names in messages (``"model."`` for configs).
    Raises:
        ValueError: the first problem found, naming the field and the fix.
    """
    o = options
    f = lambda name: f"{prefix}{name}"
    for name in ("dim", "depth", "heads"):
        value = getattr(o, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{f(name)}={value!r} must be an integer >= 1")
    dim, heads = o.dim, o.heads
    if o.dim_head is None and dim % heads:
        divisors = [h for h in range(1, dim + 1) if dim % h == 0 and h <= 64]
        raise ValueError(
            f"{f('heads')}={heads} must divide {f('dim')}={dim} (dim_head = dim / heads); "
            f"pick heads from {divisors[-6:]} or set {f('dim_head')} explicitly"
        )
    if o.dim_head is not None and o.dim_head < 1:
        raise ValueError(f"{f('dim_head')}={o.dim_head} must be >= 1 (or null for dim / heads)")
    plan = _check_positions(o, causal=causal, f=f)
    check_attention_options(o, heads, prefix=prefix)
    if o.ff_dropout is not None and not 0.0 <= o.ff_dropout < 1.0:
        raise ValueError(f"{f('ff_dropout')}={o.ff_dropout} must be in [0, 1)")
    _check_stack(o, f=f)
    _check_kernel(o, plan, causal=causal, f=f)
    return plan


def _check_positions(o: LayerOptions, *, causal: bool, f) -> PositionPlan:
    """The position schemes and their options."""
    try:
        plan = resolve_position(o.position)
    except ValueError as exc:
        raise ValueError(f"{f('position')}: {exc}") from None
    # An option that is off by default (None or False) switches something on, so it needs its
    # scheme; a tuning value (a divisor, a base) is harmless without it and accepted.
    for option, schemes in scheme_option_names().items():
        value, default = getattr(o, option), _default(option)
        off_by_default = default is None or default is False
        if off_by_default and value != default and value is not None and not set(schemes) & set(plan.names):
            scheme = " or ".join(map(repr, schemes))
            raise ValueError(
                f"{f(option)}={value!r} only applies to position scheme {scheme}, which is not in "
                f"{f('position')}={o.position!r}; add {scheme} to the position list or drop {f(option)}"
            )
    head_dim = o.head_dim
    if plan.rotary:
        rd = o.rotary_dim
        if rd is not None and (rd % 2 or not 2 <= rd <= head_dim):
            raise ValueError(f"{f('rotary_dim')}={rd} must be even and in 2..dim_head={head_dim}; e.g. {head_dim // 2 // 2 * 2 or 2}")
        if o.rotary_base <= 0:
            raise ValueError(f"{f('rotary_base')}={o.rotary_base} must be > 0 (RoPE uses 10000)")
        if o.rotary_xpos and not causal:
            raise ValueError(f"{f('rotary_xpos')}=true needs causal attention; use kind=decoder or drop xPos")
    if "alibi" in plan.names and o.alibi_num_heads is not None and not 1 <= o.alibi_num_heads <= o.heads:
        raise ValueError(f"{f('alibi_num_heads')}={o.alibi_num_heads} must be in 1..heads={o.heads} (null = all heads)")
    if plan.bias in ("fox", "fox_per_row") and not o.forget_gate_divisor > 0:
        raise ValueError(f"{f('forget_gate_divisor')}={o.forget_gate_divisor} must be > 0 (usually 1, 8 or 16)")
    if plan.bias == "fox_per_row" and not causal:
        raise ValueError(f"{f('position')}: 'fox_per_row' is causal only; use kind=decoder, or 'fox' for an encoder")
    if plan.bias == "t5":
        nb, md = o.num_buckets or 32, o.max_distance or 128
        per_side = nb if causal else nb // 2
        if per_side < 2 or (not causal and nb % 2):
            raise ValueError(f"{f('num_buckets')}={nb} is too small: need >= 2 per direction (even, >= 4, when bidirectional)")
        if md <= per_side // 2:
            raise ValueError(f"{f('max_distance')}={md} must exceed num_buckets/2 = {per_side // 2} exact buckets")
    return plan


def _default(option: str) -> Any:
    return LayerOptions.__dataclass_fields__[option].default


def _check_stack(o: LayerOptions, *, f) -> None:
    """Feed-forward, norms, value residual and the layer pattern."""
    if not o.ff_mult > 0:
        raise ValueError(f"{f('ff_mult')}={o.ff_mult} must be > 0 (usually 4)")
    if o.ff_activation not in feedforward_activations():
        raise ValueError(f"{f('ff_activation')}={o.ff_activation!r} is unknown; valid: {feedforward_activations()}")
    if o.norm not in NORMS:
        raise ValueError(f"{f('norm')}={o.norm!r} is unknown; valid: {sorted(NORMS)}")
    if o.norm_style not in NORM_STYLES:
        raise ValueError(f"{f('norm_style')}={o.norm_style!r} is unknown; valid: {list(NORM_STYLES)}")
    if o.value_residual_mix not in VALUE_RESIDUAL_MIXES:
        raise ValueError(
            f"{f('value_residual_mix')}={o.value_residual_mix!r} is unknown; valid: {list(VALUE_RESIDUAL_MIXES)}"
        )
    pattern = o.layer_pattern
    if pattern is not None:
        bad = sorted(set(pattern) - set(LAYER_KINDS))
        if not pattern or bad:
            raise ValueError(
                f"{f('layer_pattern')}={pattern!r}: use a non-empty string of {LAYER_KINDS} (e.g. 'af'); bad: {bad}"
            )


def _check_kernel(o: LayerOptions, plan: PositionPlan, *, causal: bool, f) -> None:
    """The attention backend override and pruning."""
    backend = o.attn_backend
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{f('attn_backend')}={backend!r} is unknown; valid: {list(BACKENDS)} (or null)")
        matrix = plan.bias is not None and registered_biases()[plan.bias] == "matrix"
        if backend in ("fold", "flex", "fla", "cuda") and (not causal or matrix):
            why = "bidirectional attention" if not causal else f"the matrix bias {plan.bias!r}"
            raise ValueError(
                f"{f('attn_backend')}={backend!r} serves causal decay/plain attention only, not {why}; "
                "use 'auto', 'chunked' or 'reference'"
            )
        if backend == "fla" and not fla_available():
            raise ValueError(f"{f('attn_backend')}='fla': {FLA_MISSING}")
    prune = o.attn_prune
    if not isinstance(prune, bool):
        raise ValueError(f"{f('attn_prune')}={prune!r} must be true or false")
    eps = o.attn_prune_eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
        raise ValueError(f"{f('attn_prune_eps')}={eps!r} must be a number in (0, 1) (pruned attention mass per row)")


def validate_model_config(cfg: ModelConfig | dict[str, Any]) -> PositionPlan:
    """Check a whole :class:`~xforget.models.config.ModelConfig` (or a dict of its fields).

    The fields that are not layer options (kind, num_tokens, max_seq_len, num_memory_tokens), then the
    layer options the config describes (:func:`check_layer_options`).
    Returns the resolved position plan.
    Raises:
        ValueError: naming ``model.<field>`` and the fix.
        TypeError: an unknown key in ``model.extra``.
    """
    if not isinstance(cfg, ModelConfig):
        cfg = model_config_from_dict(dict(cfg))
    if cfg.kind not in ("decoder", "encoder"):
        raise ValueError(f"model.kind={cfg.kind!r} must be 'decoder' (causal LM) or 'encoder' (bidirectional)")
    for name in ("num_tokens", "max_seq_len"):
        value = getattr(cfg, name)
        if name == "num_tokens" and value is None:  # from the data (build_model: bytes, 256)
            continue
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{name}={value!r} must be an integer >= 1")
    if not isinstance(cfg.num_memory_tokens, int) or cfg.num_memory_tokens < 0:
        raise ValueError(f"model.num_memory_tokens={cfg.num_memory_tokens!r} must be an integer >= 0 (0 = none)")
    options = config_layer_options(cfg)
    pattern = options.layer_pattern
    if pattern and "c" in pattern:
        raise ValueError(
            f"model.layer_pattern={pattern!r} has cross-attention ('c'), but a language model has no context; "
            "use 'a' and 'f' only (cross-attention lives in XTransformer / CrossAttender)"
        )
    return check_layer_options(options, causal=cfg.kind == "decoder", prefix="model.")
