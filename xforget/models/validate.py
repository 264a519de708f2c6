"""The one validation step for model options, run before anything is built.

:func:`check_layer_options` checks the options of a layer stack (what
:class:`~xforget.models.layers.AttentionLayers` takes) as a whole -- geometry, scheme
compatibility, option ranges -- and :func:`validate_model_config` adds the
wrapper-level fields of a :class:`~xforget.models.config.ModelConfig`. Every error is a
``ValueError`` that names the field (``model.<field>`` for configs, so the
message can be pasted back as a command-line override) and says how to fix it.
"""

from __future__ import annotations

from typing import Any

from xforget.nn.bias import registered_biases
from xforget.nn.feedforward import feedforward_activations
from xforget.nn.norms import NORM_STYLES, NORMS
from xforget.models.positions import PositionPlan, resolve_position
from xforget.nn.value_residual import VALUE_RESIDUAL_MIXES

LAYER_KINDS = {"a": "self-attention", "c": "cross-attention", "f": "feed-forward"}

# scheme-specific options: option -> (scheme it needs, its "unset" value)
_SCHEME_OPTIONS = {
    "alibi_num_heads": ("alibi", None),
    "rotary_dim": ("rotary", None),
    "rotary_xpos": ("rotary", False),
    "num_buckets": ("t5", None),
    "max_distance": ("t5", None),
    "dynamic_bias_dim": ("dynamic", None),
    "dynamic_bias_depth": ("dynamic", None),
    "dynamic_bias_log_distance": ("dynamic", False),
    "per_row_dim_head": ("fox_per_row", None),
}


QK_NORMS = (False, True, "l2")  # qk_norm values: off, per-head RMSNorm, l2 + learned scale


def check_layer_options(options: dict[str, Any], *, causal: bool, prefix: str = "") -> PositionPlan:
    """Validate a layer stack's options together; return the resolved position plan.

    Args:
        options: keyword options of :class:`~xforget.models.layers.AttentionLayers`
            (missing keys take their defaults).
        causal: whether the stack is causal (Decoder) or bidirectional.
        prefix: prepended to field names in messages (``"model."`` for configs).
    Raises:
        ValueError: the first problem found, naming the field and the fix.
    """
    o = options
    f = lambda name: f"{prefix}{name}"  # noqa: E731
    dim, depth, heads = o.get("dim"), o.get("depth"), o.get("heads")
    for name, value in (("dim", dim), ("depth", depth), ("heads", heads)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{f(name)}={value!r} must be an integer >= 1")
    dim_head = o.get("dim_head")
    if dim_head is None and dim % heads:
        divisors = [h for h in range(1, dim + 1) if dim % h == 0 and h <= 64]
        raise ValueError(
            f"{f('heads')}={heads} must divide {f('dim')}={dim} (dim_head = dim / heads); "
            f"pick heads from {divisors[-6:]} or set {f('dim_head')} explicitly"
        )
    if dim_head is not None and dim_head < 1:
        raise ValueError(f"{f('dim_head')}={dim_head} must be >= 1 (or null for dim / heads)")
    head_dim = dim // heads if dim_head is None else dim_head

    kv_heads = o.get("kv_heads")
    if kv_heads is not None and (kv_heads < 1 or heads % kv_heads):
        ok = [k for k in range(1, heads + 1) if heads % k == 0]
        raise ValueError(f"{f('kv_heads')}={kv_heads} must divide {f('heads')}={heads}; use one of {ok} (1 = multi-query)")

    try:
        plan = resolve_position(o.get("position", "none"))
    except ValueError as exc:
        raise ValueError(f"{f('position')}: {exc}") from None
    used = set(plan.names)
    for option, (scheme, unset) in _SCHEME_OPTIONS.items():
        value = o.get(option, unset)
        if value != unset and value is not None and scheme not in used:
            raise ValueError(
                f"{f(option)}={value!r} only applies to position scheme {scheme!r}, which is not in "
                f"{f('position')}={o.get('position', 'none')!r}; add {scheme!r} to the position list or drop {f(option)}"
            )
    if plan.rotary:
        rd = o.get("rotary_dim")
        if rd is not None and (rd % 2 or not 2 <= rd <= head_dim):
            raise ValueError(f"{f('rotary_dim')}={rd} must be even and in 2..dim_head={head_dim}; e.g. {head_dim // 2 // 2 * 2 or 2}")
        if o.get("rotary_base", 10000.0) <= 0:
            raise ValueError(f"{f('rotary_base')}={o.get('rotary_base')} must be > 0 (RoPE uses 10000)")
        if o.get("rotary_xpos") and not causal:
            raise ValueError(f"{f('rotary_xpos')}=true needs causal attention; use kind=decoder or drop xPos")
    if "alibi" in used and o.get("alibi_num_heads") is not None and not 1 <= o["alibi_num_heads"] <= heads:
        raise ValueError(f"{f('alibi_num_heads')}={o['alibi_num_heads']} must be in 1..heads={heads} (null = all heads)")
    if plan.bias in ("fox", "fox_per_row") and not o.get("forget_gate_divisor", 1.0) > 0:
        raise ValueError(f"{f('forget_gate_divisor')}={o.get('forget_gate_divisor')} must be > 0 (usually 1, 8 or 16)")
    if plan.bias == "fox_per_row" and not causal:
        raise ValueError(f"{f('position')}: 'fox_per_row' is causal only; use kind=decoder, or 'fox' for an encoder")
    if plan.bias == "t5":
        nb, md = o.get("num_buckets") or 32, o.get("max_distance") or 128
        per_side = nb if causal else nb // 2
        if per_side < 2 or (not causal and nb % 2):
            raise ValueError(f"{f('num_buckets')}={nb} is too small: need >= 2 per direction (even, >= 4, when bidirectional)")
        if md <= per_side // 2:
            raise ValueError(f"{f('max_distance')}={md} must exceed num_buckets/2 = {per_side // 2} exact buckets")

    if o.get("num_mem_kv", 0) < 0:
        raise ValueError(f"{f('num_mem_kv')}={o['num_mem_kv']} must be >= 0 (0 = no memory key/values)")
    qk = o.get("qk_norm", False)
    if qk not in QK_NORMS:
        raise ValueError(f"{f('qk_norm')}={qk!r} is not a qk-norm; valid: false, true (per-head RMSNorm), "
                         "'l2' (l2-normalised q and k with a learned scale, x-transformers' attn_qk_norm)")
    if qk == "l2" and o.get("num_mem_kv", 0):
        raise ValueError(f"{f('qk_norm')}='l2' with {f('num_mem_kv')}={o['num_mem_kv']} is not supported; "
                         "use qk_norm=true (RMSNorm) with memory key/values")
    sc = o.get("softclamp_logits")
    if sc is not None and not sc > 0:
        raise ValueError(f"{f('softclamp_logits')}={sc} must be > 0 (e.g. 50), or null for off")
    for name in ("dropout", "attn_dropout", "ff_dropout"):
        value = o.get(name)
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"{f(name)}={value} must be in [0, 1)")
    if not o.get("ff_mult", 4) > 0:
        raise ValueError(f"{f('ff_mult')}={o.get('ff_mult')} must be > 0 (usually 4)")
    if o.get("ff_activation", "gelu") not in feedforward_activations():
        raise ValueError(f"{f('ff_activation')}={o.get('ff_activation')!r} is unknown; valid: {feedforward_activations()}")
    if o.get("norm", "layernorm") not in NORMS:
        raise ValueError(f"{f('norm')}={o.get('norm')!r} is unknown; valid: {sorted(NORMS)}")
    if o.get("norm_style", "pre") not in NORM_STYLES:
        raise ValueError(f"{f('norm_style')}={o.get('norm_style')!r} is unknown; valid: {list(NORM_STYLES)}")
    if o.get("value_residual_mix", "learned") not in VALUE_RESIDUAL_MIXES:
        raise ValueError(
            f"{f('value_residual_mix')}={o.get('value_residual_mix')!r} is unknown; valid: {list(VALUE_RESIDUAL_MIXES)}"
        )
    pattern = o.get("layer_pattern")
    if pattern is not None:
        bad = sorted(set(pattern) - set(LAYER_KINDS))
        if not pattern or bad:
            raise ValueError(
                f"{f('layer_pattern')}={pattern!r}: use a non-empty string of {LAYER_KINDS} (e.g. 'af'); bad: {bad}"
            )
    backend = o.get("attn_backend")
    if backend is not None:
        from xforget.ops import BACKENDS

        if backend not in BACKENDS:
            raise ValueError(f"{f('attn_backend')}={backend!r} is unknown; valid: {list(BACKENDS)} (or null)")
        matrix = plan.bias is not None and registered_biases()[plan.bias] == "matrix"
        if backend in ("fold", "cuda") and (not causal or matrix):
            why = "bidirectional attention" if not causal else f"the matrix bias {plan.bias!r}"
            raise ValueError(
                f"{f('attn_backend')}={backend!r} serves causal decay/plain attention only, not {why}; "
                "use 'auto', 'chunked' or 'reference'"
            )
    prune = o.get("attn_prune", True)
    if not isinstance(prune, bool):
        raise ValueError(f"{f('attn_prune')}={prune!r} must be true or false")
    eps = o.get("attn_prune_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
        raise ValueError(f"{f('attn_prune_eps')}={eps!r} must be a number in (0, 1) (pruned attention mass per row)")
    return plan


def validate_model_config(cfg: Any) -> PositionPlan:
    """Check a whole :class:`~xforget.models.config.ModelConfig` (or a dict of its fields).

    Returns the resolved position plan.
    Raises:
        ValueError: naming ``model.<field>`` and the fix.
    """
    values = dict(cfg) if isinstance(cfg, dict) else {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    kind = values.get("kind", "decoder")
    if kind not in ("decoder", "encoder"):
        raise ValueError(f"model.kind={kind!r} must be 'decoder' (causal LM) or 'encoder' (bidirectional)")
    for name in ("num_tokens", "max_seq_len"):
        value = values.get(name)
        if name == "num_tokens" and value is None:  # from the data (build_model: bytes, 256)
            continue
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{name}={value!r} must be an integer >= 1")
    options = {k: v for k, v in values.items() if k not in ("kind", "num_tokens", "max_seq_len", "tie_embedding", "extra")}
    options.update(values.get("extra") or {})
    pattern = options.get("layer_pattern")
    if pattern and "c" in pattern:
        raise ValueError(
            f"model.layer_pattern={pattern!r} has cross-attention ('c'), but a language model has no context; "
            "use 'a' and 'f' only (cross-attention lives in XTransformer / CrossAttender)"
        )
    return check_layer_options(options, causal=kind == "decoder", prefix="model.")
