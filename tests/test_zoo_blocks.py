"""Blocks and wrappers of the zoo: feed-forward, norms and their placement, layer patterns,
cross-attention, encoder-decoder, continuous wrapper, weight tying, config validation and presets."""

import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xforget import (ContinuousTransformerWrapper, CrossAttender, Decoder, ModelConfig, TransformerWrapper,
                     XTransformer, build_model)
from xforget.nn.feedforward import FeedForward
from xforget.nn.norms import RMSNorm, ScaleNorm
from xforget.models.validate import validate_model_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ----------------------------------------------------------------------------- feed-forward and norms


@pytest.mark.parametrize("activation", ["gelu", "relu", "relu2", "silu", "swiglu", "geglu"])
def test_feedforward_formulas_float64(activation):
    ff = FeedForward(8, mult=2, activation=activation)
    x = torch.randn(2, 3, 8)
    h = x.double() @ ff.proj_in.weight.double().T + ff.proj_in.bias.double()
    if activation == "gelu":
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    elif activation == "relu":
        h = h.clamp(min=0)
    elif activation == "relu2":
        h = h.clamp(min=0) ** 2
    elif activation == "silu":
        h = h / (1 + torch.exp(-h))
    else:
        up, gate = h.chunk(2, -1)  # (up, gate) halves, as in x-transformers
        act = gate * torch.sigmoid(gate) if activation == "swiglu" else 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2)))
        h = up * act
    want = h @ ff.proj_out.weight.double().T + ff.proj_out.bias.double()
    assert ff.proj_in.out_features == 16 * (2 if activation in ("swiglu", "geglu") else 1)
    torch.testing.assert_close(ff(x).double(), want, atol=1e-6, rtol=1e-6)


def test_rmsnorm_and_scalenorm_formulas():
    x = torch.randn(3, 8)
    rms = RMSNorm(8)
    with torch.no_grad():
        rms.weight.normal_()
    want = x.double() / x.double().pow(2).mean(-1, keepdim=True).sqrt() * rms.weight.double()
    torch.testing.assert_close(rms(x).double(), want, atol=1e-6, rtol=1e-6)
    sn = ScaleNorm(8)
    torch.testing.assert_close(sn(x).double(), math.sqrt(8) * x.double() / x.double().norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("style", ["pre", "post", "sandwich"])
def test_norm_placement(style):
    torch.manual_seed(0)
    layers = Decoder(dim=16, depth=1, heads=2, norm_style=style, norm="rmsnorm")
    a, f = layers.blocks[0].layers
    with torch.no_grad():  # make every norm distinguishable
        for p in layers.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 16)
    pos = torch.arange(5)
    attn = lambda h: a.fn(h, positions=pos)[0]  # noqa: E731
    if style == "pre":
        h = x + attn(a.norm(x))
        want = layers.final_norm(h + f.fn(f.norm(h)))
    elif style == "post":
        h = a.post_norm(x + attn(x))
        want = f.post_norm(h + f.fn(h))
        assert isinstance(layers.final_norm, torch.nn.Identity)
    else:
        h = x + a.post_branch_norm(attn(a.norm(x)))
        want = layers.final_norm(h + f.post_branch_norm(f.fn(f.norm(h))))
    torch.testing.assert_close(layers(x)[0], want)


# ----------------------------------------------------------------------------- layer patterns, cross-attention


def test_custom_layer_pattern_and_value_residual_source():
    layers = Decoder(dim=16, depth=2, heads=2, layer_pattern="aaf", value_residual=True)
    kinds = [s.kind for s in layers.sublayers()]
    assert kinds == list("aafaaf")
    attns = [s.fn for s in layers.sublayers() if s.kind == "a"]
    assert attns[0].value_residual is None and all(a.value_residual is not None for a in attns[1:])
    net = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=layers)
    x = torch.randint(0, 20, (1, 7))
    full = net(x)
    logits, cache = net(x[:, :4], return_cache=True)
    assert len(cache.layers) == 4
    rest, _ = net(x[:, 4:], cache=cache, return_cache=True)
    torch.testing.assert_close(torch.cat((logits, rest), 1), full, atol=1e-6, rtol=0)  # measured 0 vs the reference
    with pytest.raises(ValueError, match="layer_pattern"):
        Decoder(dim=16, depth=1, heads=2, layer_pattern="axf")


def test_cross_attender_ignores_masked_context():
    torch.manual_seed(0)
    ca = CrossAttender(dim=16, depth=2, heads=2)
    assert [s.kind for s in ca.sublayers()] == list("cfcf")
    x, ctx = torch.randn(2, 9, 16), torch.randn(2, 4, 16)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = ca(x, context=ctx, context_mask=mask)[0]
    ctx2 = ctx.clone()
    ctx2[0, 2:] = 100.0  # only masked positions change
    torch.testing.assert_close(ca(x, context=ctx2, context_mask=mask)[0], out)
    assert (ca(x, context=ctx2)[0] - out)[0].abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs context"):
        ca(x)


def test_xtransformer_learns_to_copy():
    torch.manual_seed(0)
    model = XTransformer(dim=32, tie_token_emb=True,
                         enc_num_tokens=12, enc_max_seq_len=16, enc_depth=1, enc_heads=4, enc_position="alibi",
                         dec_num_tokens=12, dec_max_seq_len=16, dec_depth=1, dec_heads=4, dec_position=["fox", "rotary"])
    assert model.decoder.token_emb is model.encoder.token_emb
    assert [s.kind for s in model.decoder.attn_layers.sublayers()] == list("acf")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    src = torch.randint(2, 12, (8, 6))
    tgt = torch.cat((torch.ones(8, 1, dtype=torch.long), src), 1)
    losses = []
    for _ in range(12):
        loss = model(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]
    out = model.generate(src[:2], tgt[:2, :1], 6, temperature=0.0)
    assert out.shape == (2, 6)


def test_continuous_wrapper_vectors_in_and_out_with_cache():
    torch.manual_seed(0)
    net = ContinuousTransformerWrapper(attn_layers=Decoder(dim=16, depth=2, heads=2, position=["absolute", "fox"]),
                                       max_seq_len=32, dim_in=5, dim_out=3).eval()
    x = torch.randn(2, 8, 5)
    full = net(x)
    assert full.shape == (2, 8, 3)
    head, cache = net(x[:, :5], return_cache=True)
    tail, _ = net(x[:, 5:], cache=cache, return_cache=True)
    torch.testing.assert_close(torch.cat((head, tail), 1), full, atol=3e-6, rtol=0)  # measured 3.1e-7 vs the reference


def test_weight_tying_shares_one_parameter():
    net = build_model(dict(dim=16, depth=1, heads=2, num_tokens=30, max_seq_len=8, tie_embedding=True, position="rotary"))
    assert net.to_logits.weight is net.token_emb.emb.weight
    net(torch.randint(0, 30, (1, 6))).sum().backward()
    assert net.token_emb.emb.weight.grad is not None


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("values,message", [
    (dict(dim=30, heads=4), "model.heads=4 must divide model.dim=30"),
    (dict(kv_heads=3), "model.kv_heads=3 must divide model.heads=8"),
    (dict(position="rotary", rotary_dim=7), "model.rotary_dim=7 must be even"),
    (dict(position="fox", rotary_dim=8), "model.rotary_dim=8 only applies to position scheme 'rotary'"),
    (dict(position=["alibi", "t5"]), "model.position: position schemes 'alibi' and 't5' cannot be combined"),
    (dict(position="alibi", alibi_num_heads=9), "model.alibi_num_heads=9 must be in 1..heads=8"),
    (dict(layer_pattern="acf"), "model.layer_pattern='acf' has cross-attention"),
    (dict(ff_activation="swish"), "model.ff_activation='swish' is unknown"),
    (dict(norm_style="middle"), "model.norm_style='middle' is unknown"),
    (dict(softclamp_logits=0.0), "model.softclamp_logits=0.0 must be > 0"),
    (dict(kind="encoder", position="fox_per_row"), "'fox_per_row' is causal only"),
    (dict(num_mem_kv=-1), "model.num_mem_kv=-1 must be >= 0"),
])
def test_validation_names_the_field_and_the_fix(values, message):
    cfg = ModelConfig(**values)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate_model_config(cfg)
    with pytest.raises(ValueError):
        build_model(cfg)


# ----------------------------------------------------------------------------- presets and the command line


def _compose(overrides):
    pytest.importorskip("hydra")
    from xforget.train.config import compose_config, to_train_config

    return to_train_config(compose_config(overrides))


def test_every_preset_composes_builds_and_trains_three_steps():
    names = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
    assert {"gpt", "alibi", "fox", "fox_pro", "nope", "t5"} <= set(names)
    for name in names:
        cfg = _compose([f"model={name}", "model.dim=32", "model.depth=1", "model.heads=4", "trainer.seq_len=16"])
        torch.manual_seed(0)
        model = build_model(cfg.model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, 256, (2, 17))
        for _ in range(3):
            loss = F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert math.isfinite(loss.item()), name
        if name == "fox_pro":
            attn = model.attn_layers.blocks[0].attn
            assert attn.q_norm is not None and attn.to_gate is not None and attn.kv_shift is not None
            assert attn.out_norm is not None


SAMPLE_OVERRIDES = {
    "kind": "encoder", "num_tokens": 256, "num_memory_tokens": 2, "max_seq_len": 64, "dim": 48, "depth": 3, "heads": 6, "dim_head": 16,
    "position": "[t5,rotary]", "ff_mult": 2.0, "ff_activation": "swiglu", "norm": "scalenorm", "norm_style": "sandwich",
    "layer_pattern": "aaf", "dropout": 0.1, "attn_dropout": 0.2, "ff_dropout": 0.3, "forget_gate_divisor": 8.0,
    "forget_gate_bias_init": 5.0, "alibi_num_heads": 3, "rotary_dim": 8, "rotary_base": 500.0, "rotary_xpos": True,
    "rotary_xpos_scale_base": 256.0, "num_buckets": 16, "max_distance": 64, "dynamic_bias_dim": 12,
    "dynamic_bias_depth": 3, "dynamic_bias_log_distance": True, "per_row_dim_head": 4, "kv_heads": 2, "num_mem_kv": 4,
    "qk_norm": True, "output_gate": True, "kv_shift": True, "output_norm": True, "softclamp_logits": 30.0,
    "value_residual": True, "value_residual_mix": "fixed", "tie_embedding": True, "attn_backend": "reference",
    "attn_prune": False, "attn_prune_eps": 1e-5,
    "extra": "{}",
}


def test_every_model_option_is_reachable_from_the_command_line():
    from omegaconf import OmegaConf

    from xforget.train.config import compose_config

    names = [f.name for f in fields(ModelConfig)]
    assert sorted(SAMPLE_OVERRIDES) == sorted(names), "add new ModelConfig fields to SAMPLE_OVERRIDES"
    overrides = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SAMPLE_OVERRIDES.items()]
    model = OmegaConf.to_object(compose_config(overrides).model)
    for key, value in SAMPLE_OVERRIDES.items():
        got = getattr(model, key)
        if key == "position":
            assert list(got) == ["t5", "rotary"]
        elif key == "extra":
            assert got == {}
        else:
            assert got == value, key


def test_x_transformers_flag_names_build_the_same_options():
    from xforget.models.aliases import translate_x_transformers_kwargs

    out = translate_x_transformers_kwargs(dict(
        rel_pos_bias=True, rel_pos_num_buckets=16, attn_kv_heads=2, ff_glu=True, ff_swish=True, use_scalenorm=True,
        sandwich_norm=True, attn_softclamp_logits=True, attn_num_mem_kv=2, attn_qk_rmsnorm=True, attn_gate_values=True,
        attn_data_dependent_alibi=True, attn_data_dependent_alibi_per_row=True, rotary_pos_emb=True,
    ))
    assert sorted(out.pop("position")) == ["fox_per_row", "rotary", "t5"]
    assert out == dict(num_buckets=16, kv_heads=2, ff_activation="swiglu", norm="scalenorm", norm_style="sandwich",
                       softclamp_logits=50.0, num_mem_kv=2, qk_norm=True, output_gate=True)
    assert translate_x_transformers_kwargs(dict(pre_norm=False, ff_relu_squared=True, attn_one_kv_head=True)) == dict(
        norm_style="post", ff_activation="relu2", kv_heads=1)
    layers = Decoder(dim=16, depth=1, heads=4, rel_pos_bias=True, attn_kv_heads=2, ff_glu=True, use_rmsnorm=True)
    assert layers.plan.bias == "t5" and layers.blocks[0].attn.kv_heads == 2 and layers.blocks[0].ff.glu
