"""The typed options object: declared once, built from keywords or a ModelConfig, checked once."""

from dataclasses import fields

import pytest

from xforget import Decoder, ModelConfig, build_model
from xforget.models.config import _WRAPPER_KEYS
from xforget.models.layer_options import (
    LAYER_OPTION_NAMES,
    LayerOptions,
    config_layer_options,
)
from xforget.nn.attention_options import AttentionOptions, scheme_option_names


def test_every_layer_field_of_the_config_is_a_layer_option():
    layer_fields = {f.name for f in fields(ModelConfig)} - {"kind", "extra", *_WRAPPER_KEYS}
    assert layer_fields <= set(LAYER_OPTION_NAMES)


def test_config_and_keywords_build_the_same_options():
    cfg = ModelConfig(dim=32, depth=2, heads=4, position="fox", rotary_dim=4, kv_heads=2,
                      extra={"rotary_pos_emb": True})  # an x-transformers alias adds its scheme
    options = config_layer_options(cfg)
    assert isinstance(options, LayerOptions) and options.position == ["fox", "rotary"] and options.kv_heads == 2
    keywords = {name: getattr(options, name) for name in LAYER_OPTION_NAMES}
    assert Decoder(**keywords).options == options


def test_one_options_object_reaches_every_attention_layer():
    model = build_model(dict(dim=32, depth=2, heads=4, position="fox", forget_gate_divisor=8.0, kv_heads=2))
    options = model.attn_layers.options
    attns = [sub.fn for sub in model.attn_layers.sublayers() if sub.kind == "a"]
    assert len(attns) == 2 and all(a.kv_heads == 2 for a in attns)
    assert options.forget_gate_divisor == 8.0


def test_scheme_options_are_declared_with_their_schemes():
    schemes = scheme_option_names()
    assert schemes["alibi_num_heads"] == ("alibi",) and schemes["rotary_xpos"] == ("rotary",)
    assert set(schemes) <= {f.name for f in fields(AttentionOptions)}


def test_extra_may_not_repeat_a_config_field():
    with pytest.raises(TypeError, match="model.extra repeats"):
        build_model(dict(extra={"dim": 64}))
