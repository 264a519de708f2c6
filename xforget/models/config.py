"""Typed model configuration: the one place a model is described as data.

``ModelConfig`` backs the Hydra ``model/`` group (configs/model/*.yaml), so an
unknown key fails at composition time with the valid keys listed, and
:func:`xforget.models.wrapper.build_model` turns it into a :class:`TransformerWrapper`. This module
is pure data: it imports nothing of the model, so every layer can read a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class ModelConfig:
    """Every model option, with defaults: the Hydra schema of the ``model/`` group.

    The layer fields have the names of :class:`xforget.models.layer_options.LayerOptions`
    (documented there), which :func:`xforget.models.layer_options.config_layer_options`
    builds from this config in one place.

    ``position`` is a scheme name or a list of names; ``kind`` is ``decoder``
    (causal) or ``encoder`` (bidirectional). Scheme-specific options left at
    null take the scheme's default and must stay null when the scheme is not
    used. :func:`xforget.models.validate.validate_model_config` checks everything
    before a model is built. ``num_tokens`` left at None means "from the data":
    training takes it from the dataset (256 for byte corpora, ``meta.json``'s
    ``vocab_size`` for ``data=tokens``), and :func:`build_model` uses 256 (bytes).
    """

    kind: str = "decoder"
    num_tokens: int | None = None  # vocabulary; None = from the data (bytes: 256; training: meta.json of data=tokens)
    max_seq_len: int = 256
    dim: int = 256
    depth: int = 4
    heads: int = 8
    dim_head: int | None = None
    position: Any = "fox"
    ff_mult: float = 4.0
    ff_activation: str = "gelu"  # gelu | relu | relu2 | silu | swiglu | geglu
    norm: str = "layernorm"  # layernorm | rmsnorm | scalenorm
    norm_style: str = "pre"  # pre | post | sandwich
    layer_pattern: str | None = None  # one block's sublayers over "a" (attention), "f" (feed-forward); default "af"
    dropout: float = 0.0  # attention weights and feed-forward activations
    attn_dropout: float | None = None  # overrides dropout for attention weights
    ff_dropout: float | None = None  # overrides dropout for feed-forward activations
    # scheme options
    forget_gate_divisor: float = 1.0
    forget_gate_bias_init: float = 0.0
    alibi_num_heads: int | None = None
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    rotary_xpos: bool = False
    rotary_xpos_scale_base: float = 512.0
    num_buckets: int | None = None  # t5 (32)
    max_distance: int | None = None  # t5 (128)
    dynamic_bias_dim: int | None = None  # dynamic (dim // 4)
    dynamic_bias_depth: int | None = None  # dynamic (2)
    dynamic_bias_log_distance: bool = False  # dynamic
    per_row_dim_head: int | None = None  # fox_per_row (8)
    # attention options
    kv_heads: int | None = None  # grouped-query attention; 1 = multi-query
    num_mem_kv: int = 0
    qk_norm: Any = False  # false | true (per-head RMSNorm) | l2 (l2-normalised q, k with a learned scale)
    output_gate: bool = False
    kv_shift: bool = False
    output_norm: bool = False
    softclamp_logits: float | None = None
    value_residual: bool = False
    value_residual_mix: str = "learned"
    tie_embedding: bool = False
    num_memory_tokens: int = 0  # x-transformers' num_memory_tokens: learned vectors every token attends to (not with packed documents)
    attn_backend: str | None = None
    attn_prune: bool = True  # adaptive computation pruning (xforget.ops.prune); false: every key computed
    attn_prune_eps: float = 1e-6  # pruned attention mass per row
    extra: dict = field(default_factory=dict)  # further layer options or x-transformers aliases (e.g. cross_attend)


_WRAPPER_KEYS = {"num_tokens", "max_seq_len", "tie_embedding", "num_memory_tokens"}
BYTE_VOCAB = 256


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig from a plain dict.

    Raises:
        ValueError: an unknown key, listing the valid keys.
    """
    valid = [f.name for f in fields(ModelConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {valid}")
    return ModelConfig(**values)


def describe_model(cfg: ModelConfig) -> str:
    """One line naming what sets this model apart, for logs: position scheme(s), then the attention extras
    that are on, the norm and the feed-forward, e.g. ``fox + qk_norm, output_gate, kv_shift, output_norm;
    rmsnorm, swiglu x4`` (FoX Pro) against ``fox; layernorm, gelu x4`` (plain FoX)."""
    position = cfg.position if isinstance(cfg.position, str) else "+".join(map(str, cfg.position))
    extras = [name for name in ("qk_norm", "output_gate", "kv_shift", "output_norm", "value_residual", "tie_embedding")
              if getattr(cfg, name)]
    if cfg.qk_norm == "l2":
        extras[extras.index("qk_norm")] = "qk_norm=l2"
    if cfg.kv_heads:
        extras.append(f"kv_heads={cfg.kv_heads}")
    if cfg.num_memory_tokens:
        extras.append(f"num_memory_tokens={cfg.num_memory_tokens}")
    head = position + (" + " + ", ".join(extras) if extras else "")
    return f"{head}; {cfg.norm}, {cfg.ff_activation} x{cfg.ff_mult:g}"
