"""x-transformers keyword names accepted as aliases -- the one place they are mapped.

x-transformers users can switch by changing the import: their flags are
translated here into xforget's names (``position=``, ``forget_gate_divisor``...).
Flags that select a positional scheme add it to ``position``. Only names are
mapped; defaults stay xforget's (e.g. ``dim_head = dim // heads``, rotary over
the whole head) -- :mod:`xforget.integrations.interop` applies x-transformers' defaults when
it converts a trained model.
"""

from __future__ import annotations

from typing import Any

# alias -> our keyword (same value)
_RENAMES = {
    "add_value_residual": "value_residual",
    "attn_dim_head": "dim_head",
    "rotary_emb_dim": "rotary_dim",
    "attn_kv_heads": "kv_heads",
    "attn_num_mem_kv": "num_mem_kv",
    "attn_qk_rmsnorm": "qk_norm",
    "attn_gate_values": "output_gate",
    "rel_pos_num_buckets": "num_buckets",
    "rel_pos_max_distance": "max_distance",
    "dynamic_pos_bias_mlp_depth": "dynamic_bias_depth",
    "dynamic_pos_bias_log_distance": "dynamic_bias_log_distance",
    "attn_data_dependent_alibi_per_row_dim_head": "per_row_dim_head",
}

# alias -> scheme it adds to `position` when truthy
_SCHEME_FLAGS = {
    "alibi_pos_bias": "alibi",
    "rotary_pos_emb": "rotary",
    "attn_data_dependent_alibi": "fox",
    "use_abs_pos_emb": "absolute",
    "rel_pos_bias": "t5",
    "dynamic_pos_bias": "dynamic",
}

# x-transformers' DataDependentAlibi starts its gate bias at 5 (f = sigmoid(5) ~ 0.993 per token; with
# post_log_scale 1/8, f ~ 0.99916), the FoX paper (position="fox") at 0 (f = 0.5): the alias keeps
# x-transformers' initial time scale, so swapping the import changes nothing at initialisation
X_TRANSFORMERS_FOX_BIAS_INIT = 5.0

# accepted and ignored: our kernels are always fused where possible
_NO_OPS = {"attn_flash"}

# flags with value-dependent translations, handled one by one below
_SPECIAL = {
    "attn_data_dependent_alibi_kwargs",
    "attn_data_dependent_alibi_per_row",
    "learned_value_residual_mix",
    "use_rmsnorm",
    "use_scalenorm",
    "pre_norm",
    "sandwich_norm",
    "ff_glu",
    "ff_swish",
    "ff_relu_squared",
    "attn_softclamp_logits",
    "attn_logit_softclamp_value",
    "attn_one_kv_head",
    "attn_qk_norm",
    "attn_qk_norm_dim_scale",
}

X_TRANSFORMERS_ALIASES = frozenset(_RENAMES) | frozenset(_SCHEME_FLAGS) | frozenset(_NO_OPS) | frozenset(_SPECIAL)
"""Every x-transformers layer/wrapper flag name this module translates."""


def translate_x_transformers_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return ``kwargs`` with x-transformers names mapped to xforget's.

    Mapping:

    * schemes: alibi_pos_bias / rotary_pos_emb / attn_data_dependent_alibi /
      use_abs_pos_emb / rel_pos_bias / dynamic_pos_bias add "alibi" / "rotary" /
      "fox" / "absolute" / "t5" / "dynamic" to ``position``;
      attn_data_dependent_alibi_per_row turns "fox" into "fox_per_row".
      (``rotary_xpos`` is also our name; unlike x-transformers it does not
      switch rotary on by itself.)
    * ``attn_data_dependent_alibi_kwargs={bias_init, post_log_scale}`` ->
      ``forget_gate_bias_init`` and ``forget_gate_divisor = 1 / post_log_scale``; without ``bias_init``
      the alias ``attn_data_dependent_alibi=True`` sets x-transformers' default bias 5
      (``X_TRANSFORMERS_FOX_BIAS_INIT``), where ``position="fox"`` keeps the FoX paper's 0.
    * renames: add_value_residual -> value_residual, attn_dim_head -> dim_head,
      rotary_emb_dim -> rotary_dim, attn_kv_heads -> kv_heads (attn_one_kv_head
      -> kv_heads=1), attn_num_mem_kv -> num_mem_kv, attn_qk_rmsnorm -> qk_norm,
      attn_gate_values -> output_gate, rel_pos_num_buckets / rel_pos_max_distance
      -> num_buckets / max_distance, dynamic_pos_bias_mlp_depth /
      _log_distance -> dynamic_bias_depth / _log_distance,
      attn_data_dependent_alibi_per_row_dim_head -> per_row_dim_head.
    * learned_value_residual_mix (bool) -> value_residual_mix "learned" / "fixed".
    * norms: use_rmsnorm / use_scalenorm -> norm; pre_norm=False -> norm_style="post";
      sandwich_norm=True -> norm_style="sandwich".
    * feed-forward: ff_glu (+ ff_swish) -> ff_activation "geglu" ("swiglu");
      ff_relu_squared -> "relu2"; ff_swish alone -> "silu".
    * attn_softclamp_logits (+ attn_logit_softclamp_value, default 50) -> softclamp_logits=value.
    * attn_qk_norm (with attn_qk_norm_dim_scale, x-transformers' learned per-channel scale)
      -> qk_norm="l2".
    * attn_flash is ignored.

    ``attn_dropout``, ``ff_dropout``, ``ff_mult``, ``alibi_num_heads``,
    ``rotary_xpos_scale_base`` and ``cross_attend`` have the same names in both.

    Raises:
        ValueError: an alias and its xforget name both given with different values.
    """
    out = dict(kwargs)
    schemes: list[str] = []

    for alias, scheme in _SCHEME_FLAGS.items():
        if alias in out:
            value = out.pop(alias)
            if value and scheme not in schemes:
                schemes.append(scheme)
    if out.pop("attn_data_dependent_alibi_per_row", False) and "fox" in schemes:
        schemes[schemes.index("fox")] = "fox_per_row"
    if "fox" in schemes and "forget_gate_bias_init" not in out and \
            "bias_init" not in (out.get("attn_data_dependent_alibi_kwargs") or {}):
        out["forget_gate_bias_init"] = X_TRANSFORMERS_FOX_BIAS_INIT
    for alias, ours in _RENAMES.items():
        if alias in out:
            _set(out, ours, out.pop(alias), alias)
    for alias in _NO_OPS:
        out.pop(alias, None)
    if "attn_data_dependent_alibi_kwargs" in out:
        fox = dict(out.pop("attn_data_dependent_alibi_kwargs") or {})
        if "bias_init" in fox:
            _set(out, "forget_gate_bias_init", fox.pop("bias_init"), "attn_data_dependent_alibi_kwargs.bias_init")
        if "post_log_scale" in fox:
            _set(out, "forget_gate_divisor", 1.0 / fox.pop("post_log_scale"), "attn_data_dependent_alibi_kwargs.post_log_scale")
        if fox:
            raise ValueError(f"unsupported attn_data_dependent_alibi_kwargs keys {sorted(fox)}; supported: bias_init, post_log_scale")
    if "learned_value_residual_mix" in out:
        _set(out, "value_residual_mix", "learned" if out.pop("learned_value_residual_mix") else "fixed", "learned_value_residual_mix")
    if out.pop("use_rmsnorm", False):
        _set(out, "norm", "rmsnorm", "use_rmsnorm")
    if out.pop("use_scalenorm", False):
        _set(out, "norm", "scalenorm", "use_scalenorm")
    if out.pop("pre_norm", True) is False:
        _set(out, "norm_style", "post", "pre_norm=False")
    if out.pop("sandwich_norm", False):
        _set(out, "norm_style", "sandwich", "sandwich_norm")
    glu, swish, relu2 = out.pop("ff_glu", False), out.pop("ff_swish", False), out.pop("ff_relu_squared", False)
    if glu and relu2:
        raise ValueError("ff_glu with ff_relu_squared has no xforget equivalent; valid: swiglu, geglu, relu2")
    if glu or swish or relu2:
        _set(out, "ff_activation", ("swiglu" if swish else "geglu") if glu else ("relu2" if relu2 else "silu"), "ff_glu/ff_swish/ff_relu_squared")
    clamp_value = out.pop("attn_logit_softclamp_value", 50.0)
    if out.pop("attn_softclamp_logits", False):
        _set(out, "softclamp_logits", float(clamp_value), "attn_softclamp_logits")
    dim_scale = out.pop("attn_qk_norm_dim_scale", True)
    if out.pop("attn_qk_norm", False):
        if not dim_scale:
            raise ValueError("attn_qk_norm with attn_qk_norm_dim_scale=False (a fixed logit scale) has no xforget "
                             "equivalent for a new model; qk_norm='l2' learns its scale (attn_qk_norm_dim_scale=True). "
                             "A trained model converts with xforget.integrations.interop.from_x_transformers")
        _set(out, "qk_norm", "l2", "attn_qk_norm")
    if out.pop("attn_one_kv_head", False):
        _set(out, "kv_heads", 1, "attn_one_kv_head")

    if schemes:
        given = out.get("position")
        given = [] if given in (None, "none") else ([given] if isinstance(given, str) else list(given))
        merged = given + [s for s in schemes if s not in given]
        out["position"] = merged[0] if len(merged) == 1 else merged
    return out


def _set(out: dict[str, Any], key: str, value: Any, alias: str) -> None:
    if key in out and out[key] != value:
        raise ValueError(f"{alias}={value!r} conflicts with {key}={out[key]!r}; give only one of them")
    out[key] = value
