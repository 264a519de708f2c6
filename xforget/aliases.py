"""x-transformers keyword names accepted as aliases -- the one place they are mapped.

x-transformers users can switch by changing the import: their flags are
translated here into xforget's names (``position=``, ``forget_gate_divisor``...).
Flags that select a positional scheme add it to ``position``.
"""

from __future__ import annotations

from typing import Any

# alias -> our keyword (same value)
_RENAMES = {
    "add_value_residual": "value_residual",
    "attn_dim_head": "dim_head",
    "rotary_emb_dim": "rotary_dim",
    "rotary_base_rescale_factor": None,  # placeholder: unsupported, rejected below
}
_RENAMES = {k: v for k, v in _RENAMES.items() if v is not None}

# alias -> scheme it adds to `position` when truthy
_SCHEME_FLAGS = {
    "alibi_pos_bias": "alibi",
    "rotary_pos_emb": "rotary",
    "attn_data_dependent_alibi": "fox",
    "use_abs_pos_emb": "absolute",
}

# accepted and ignored: our kernels are always fused where possible
_NO_OPS = {"attn_flash"}


def translate_x_transformers_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return ``kwargs`` with x-transformers names mapped to xforget's.

    Mapping: alibi_pos_bias / rotary_pos_emb / attn_data_dependent_alibi /
    use_abs_pos_emb add "alibi" / "rotary" / "fox" / "absolute" to ``position``;
    ``attn_data_dependent_alibi_kwargs={bias_init, post_log_scale}`` become
    ``forget_gate_bias_init`` and ``forget_gate_divisor = 1 / post_log_scale``;
    ``learned_value_residual_mix`` (bool) becomes ``value_residual_mix``
    ("learned" / "fixed"); ``add_value_residual`` -> ``value_residual``;
    ``attn_dim_head`` -> ``dim_head``; ``rotary_emb_dim`` -> ``rotary_dim``;
    ``use_rmsnorm`` -> ``norm="rmsnorm"``; ``attn_flash`` is ignored.

    Raises:
        ValueError: an alias and its xforget name both given with different values.
    """
    out = dict(kwargs)
    schemes: list[str] = []

    for alias, scheme in _SCHEME_FLAGS.items():
        if alias in out and out.pop(alias):
            schemes.append(scheme)
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
    if "use_rmsnorm" in out:
        if out.pop("use_rmsnorm"):
            _set(out, "norm", "rmsnorm", "use_rmsnorm")

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
