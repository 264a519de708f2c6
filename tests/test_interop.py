"""The x-transformers bridge: same logits for every flag combination in the shared set,
clear errors outside it (DESIGN.md section 1: users bring their trained models along)."""

import pytest
import torch

xt = pytest.importorskip("x_transformers")

from xforget.integrations.interop import from_x_transformers  # noqa: E402

try:  # x-transformers logs a warning for small rotary dims
    from loguru import logger

    logger.disable("x_transformers")
except ImportError:  # pragma: no cover
    pass

CASES = {
    "rotary": (xt.Decoder, dict(rotary_pos_emb=True)),
    "rotary-partial-base": (xt.Decoder, dict(rotary_pos_emb=True, rotary_emb_dim=4, rotary_base_rescale_factor=2.0)),
    "alibi-6-heads": (xt.Decoder, dict(alibi_pos_bias=True, heads=6)),
    "alibi-some-heads-encoder": (xt.Encoder, dict(alibi_pos_bias=True, alibi_num_heads=2)),
    "forget-gate": (xt.Decoder, dict(attn_data_dependent_alibi=True,
                                     attn_data_dependent_alibi_kwargs=dict(bias_init=5.0, post_log_scale=1 / 16))),
    "forget-gate-encoder": (xt.Encoder, dict(attn_data_dependent_alibi=True)),
    "forget-gate-per-row": (xt.Decoder, dict(attn_data_dependent_alibi=True, attn_data_dependent_alibi_per_row=True)),
    "value-residual-learned": (xt.Decoder, dict(add_value_residual=True, learned_value_residual_mix=True)),
    "value-residual-fixed-gqa": (xt.Decoder, dict(add_value_residual=True, learned_value_residual_mix=False, attn_kv_heads=2)),
    "gqa-rotary": (xt.Decoder, dict(attn_kv_heads=2, rotary_pos_emb=True)),
    "mqa-alibi": (xt.Decoder, dict(attn_one_kv_head=True, alibi_pos_bias=True)),
    "geglu-rmsnorm": (xt.Decoder, dict(ff_glu=True, use_rmsnorm=True)),
    "swiglu-scalenorm": (xt.Decoder, dict(ff_glu=True, ff_swish=True, use_scalenorm=True)),
    "t5": (xt.Decoder, dict(rel_pos_bias=True, rel_pos_num_buckets=16, rel_pos_max_distance=32)),
    "t5-encoder": (xt.Encoder, dict(rel_pos_bias=True)),
    "dynamic": (xt.Decoder, dict(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True)),
    "memory-kv-forget-gate": (xt.Decoder, dict(attn_num_mem_kv=3, attn_data_dependent_alibi=True)),
    "qk-rmsnorm-gate-values": (xt.Decoder, dict(attn_qk_rmsnorm=True, attn_gate_values=True)),
    "qk-l2-learned-scale-forget-gate": (xt.Decoder, dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True,
                                                         attn_data_dependent_alibi=True)),
    "qk-l2-fixed-scale-rotary-gqa": (xt.Decoder, dict(attn_qk_norm=True, attn_qk_norm_scale=8.0, rotary_pos_emb=True,
                                                      attn_kv_heads=2)),
    "qk-l2-encoder": (xt.Encoder, dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True, alibi_pos_bias=True)),
    "sandwich-relu2": (xt.Decoder, dict(sandwich_norm=True, ff_relu_squared=True, ff_mult=2)),
    "post-norm": (xt.Decoder, dict(pre_norm=False)),
    "softclamp": (xt.Decoder, dict(attn_softclamp_logits=True, attn_logit_softclamp_value=4.0)),
    "xpos": (xt.Decoder, dict(rotary_xpos=True, rotary_xpos_scale_base=16)),
    "custom-layers": (xt.Decoder, dict(custom_layers=("a", "a", "f", "a", "f"))),
}
WRAPPER_CASES = {
    "tied-embedding": dict(tie_embedding=True),
    "scaled-sinusoidal": dict(scaled_sinu_pos_emb=True),
    "no-absolute": dict(use_abs_pos_emb=False),
    "l2norm-embed": dict(l2norm_embed=True),
    "emb-dropout": dict(emb_dropout=0.1),
    "logits-dim": dict(logits_dim=7),
    "memory-tokens": dict(num_memory_tokens=3),
}


def _xt_model(layer_cls, layer_kwargs, **wrapper_kwargs):
    torch.manual_seed(0)
    kw = dict(layer_kwargs)
    heads = kw.pop("heads", 4)
    depth = None if "custom_layers" in kw else 2
    model = xt.TransformerWrapper(num_tokens=40, max_seq_len=32, **wrapper_kwargs,
                                  attn_layers=layer_cls(dim=48, depth=depth, heads=heads, attn_dim_head=16, **kw))
    with torch.no_grad():  # move every weight off its init (zero gates, unit gammas) so each mapping matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _assert_same_logits(model, ours, layer_cls=None):
    tokens = torch.randint(0, 40, (3, 24))
    with torch.no_grad():
        theirs, mine = model(tokens), ours(tokens)
    assert theirs.abs().mean() > 0.1
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_equal_x_transformers(name):
    layer_cls, kw = CASES[name]
    model = _xt_model(layer_cls, kw)
    _assert_same_logits(model, from_x_transformers(model))


@pytest.mark.parametrize("name", list(WRAPPER_CASES))
def test_wrapper_flags_equal_x_transformers(name):
    model = _xt_model(xt.Decoder, dict(attn_data_dependent_alibi=True), **WRAPPER_CASES[name])
    ours = from_x_transformers(model)
    _assert_same_logits(model, ours)
    if name == "tied-embedding":
        assert ours.to_logits.weight is ours.token_emb.emb.weight
    if name == "emb-dropout":
        assert ours.emb_dropout.p == 0.1
    if name == "logits-dim":
        assert ours(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 7)


@pytest.mark.parametrize("layer_kwargs", [{}, dict(rotary_pos_emb=True), dict(alibi_pos_bias=True)],
                         ids=["absolute-table", "rotary", "alibi"])
def test_memory_tokens_equal_x_transformers(layer_kwargs):
    """num_memory_tokens: x-transformers' memory_tokens copied; the same logits with an absolute table (the
    tokens' rows, none for the memory), rotary and ALiBi (the memory takes the first positions)."""
    model = _xt_model(xt.Decoder, layer_kwargs, num_memory_tokens=4)
    ours = from_x_transformers(model)
    assert torch.equal(ours.memory_tokens, model.memory_tokens)
    _assert_same_logits(model, ours)
    tokens = torch.randint(0, 40, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False  # x-transformers extends a mask over its memory tokens as ours does (right pads: x-transformers
    with torch.no_grad():  # numbers pads as tokens, ours does not, so left pads would move its positions only)
        torch.testing.assert_close(ours(tokens, mask=mask)[:, :7], model(tokens, mask=mask)[:, :7], atol=1e-5, rtol=1e-5)


def test_memory_tokens_interspersed_are_refused():
    model = _xt_model(xt.Decoder, {}, num_memory_tokens=2, memory_tokens_interspersed_every=4)
    with pytest.raises(ValueError, match="memory_tokens_interspersed_every"):
        from_x_transformers(model)


def test_l2norm_embed_with_an_absolute_table_equals_x_transformers():
    model = _xt_model(xt.Decoder, {}, l2norm_embed=True)
    assert type(model.pos_emb).__name__ == "AbsolutePositionalEmbedding"
    _assert_same_logits(model, from_x_transformers(model))


def test_kwargs_and_state_dict_path_equals_the_model_path():
    layer_kwargs = dict(dim=48, depth=2, heads=4, attn_dim_head=16, attn_data_dependent_alibi=True, rotary_pos_emb=True,
                        attn_kv_heads=2, ff_glu=True)
    model = _xt_model(xt.Decoder, {k: v for k, v in layer_kwargs.items() if k not in ("dim", "depth", "heads", "attn_dim_head")})
    ours = from_x_transformers(kwargs=dict(num_tokens=40, max_seq_len=32, attn_layers=dict(causal=True, **layer_kwargs)),
                               state_dict=model.state_dict())
    _assert_same_logits(model, ours)
    assert set(ours.attn_layers.plan.names) == {"fox", "rotary"}  # x-transformers drops the absolute table with rotary


def test_converted_model_caches_exactly_and_keeps_training():
    model = _xt_model(xt.Decoder, dict(attn_data_dependent_alibi=True, attn_data_dependent_alibi_kwargs=dict(bias_init=0.0)))
    ours = from_x_transformers(model)
    x = torch.randint(0, 40, (1, 10))
    full = ours(x)
    _, cache = ours(x[:, :9], return_cache=True)
    last, _ = ours(x[:, 9:], cache=cache, return_cache=True)
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    ours.train()
    ours(x).sum().backward()
    assert all(p.grad is not None for p in ours.parameters() if p.requires_grad)


@pytest.mark.parametrize("layer_kwargs,flags", [
    (dict(attn_head_scale=True, macaron=True), ["attn_head_scale", "macaron"]),
    (dict(attn_qk_norm=True, attn_qk_norm_groups=2), ["attn_qk_norm_groups"]),
    (dict(use_simple_rmsnorm=True), ["SimpleRMSNorm"]),
    (dict(ff_no_bias=True), ["ff_no_bias"]),
    (dict(attn_sparse_topk=4), ["non-softmax"]),
])
def test_unsupported_model_features_are_listed(layer_kwargs, flags):
    model = _xt_model(xt.Decoder, layer_kwargs)
    with pytest.raises(ValueError, match="outside the shared set") as err:
        from_x_transformers(model)
    assert all(f in str(err.value) for f in flags), str(err.value)


def test_unsupported_kwargs_are_listed():
    model = _xt_model(xt.Decoder, {})
    kwargs = dict(num_tokens=40, max_seq_len=32, post_emb_norm=True,
                  attn_layers=dict(causal=True, dim=48, depth=2, heads=4, attn_dim_head=16, macaron=True, attn_sparse_topk=8))
    with pytest.raises(ValueError) as err:
        from_x_transformers(kwargs=kwargs, state_dict=model.state_dict())
    assert all(f in str(err.value) for f in ("post_emb_norm=True", "macaron=True", "attn_sparse_topk=8"))


def test_state_dict_that_does_not_match_the_flags_fails():
    model = _xt_model(xt.Decoder, dict(attn_num_mem_kv=2))
    kwargs = dict(num_tokens=40, max_seq_len=32, attn_layers=dict(causal=True, dim=48, depth=2, heads=4, attn_dim_head=16))
    with pytest.raises(ValueError, match="mem_k"):
        from_x_transformers(kwargs=kwargs, state_dict=model.state_dict())
