"""x-transformers flag names map onto xforget's, and bad options fail clearly."""

import pytest
import torch

from xforget import Decoder, Encoder, TransformerWrapper
from xforget.models.aliases import translate_x_transformers_kwargs


def test_scheme_flags_become_position():
    assert translate_x_transformers_kwargs({"alibi_pos_bias": True})["position"] == "alibi"
    assert translate_x_transformers_kwargs({"rotary_pos_emb": True})["position"] == "rotary"
    out = translate_x_transformers_kwargs({"attn_data_dependent_alibi": True, "rotary_pos_emb": True})
    assert sorted(out["position"]) == ["fox", "rotary"]
    assert "position" not in translate_x_transformers_kwargs({"alibi_pos_bias": False})


def test_forget_gate_kwargs_translate():
    out = translate_x_transformers_kwargs({
        "attn_data_dependent_alibi": True,
        "attn_data_dependent_alibi_kwargs": {"bias_init": 5.0, "post_log_scale": 1 / 16},
        "add_value_residual": True,
        "learned_value_residual_mix": False,
    })
    assert out == {"position": "fox", "forget_gate_bias_init": 5.0, "forget_gate_divisor": 16.0,
                   "value_residual": True, "value_residual_mix": "fixed"}


def test_aliased_model_equals_native_model():
    torch.manual_seed(0)
    native = TransformerWrapper(num_tokens=40, max_seq_len=16, attn_layers=Decoder(
        dim=32, depth=2, heads=4, position="fox", forget_gate_divisor=8.0, forget_gate_bias_init=5.0, value_residual=True))
    torch.manual_seed(0)
    aliased = TransformerWrapper(num_tokens=40, max_seq_len=16, attn_layers=Decoder(
        dim=32, depth=2, heads=4, attn_data_dependent_alibi=True, add_value_residual=True,
        attn_data_dependent_alibi_kwargs=dict(bias_init=5.0, post_log_scale=1 / 8), attn_flash=True))
    x = torch.randint(0, 40, (2, 10))
    torch.testing.assert_close(native(x), aliased(x))


def test_absolute_embedding_only_when_asked():
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2, position="fox"))
    assert net.pos_emb is None
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2, position="absolute"))
    assert net.pos_emb is not None
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2), use_abs_pos_emb=True)
    assert net.pos_emb is not None


def test_unknown_option_lists_valid_ones():
    with pytest.raises(TypeError, match="valid options"):
        Decoder(dim=16, depth=1, heads=2, positon="fox")


def test_unknown_position_lists_schemes():
    with pytest.raises(ValueError, match="valid schemes"):
        Decoder(dim=16, depth=1, heads=2, position="foxx")


def test_incompatible_schemes_named():
    with pytest.raises(ValueError, match="'alibi' and 'fox'"):
        Encoder(dim=16, depth=1, heads=2, position=["alibi", "fox"])


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="heads=3 must divide dim=16"):
        Decoder(dim=16, depth=1, heads=3)


def test_token_out_of_range_and_too_long_sequence():
    net = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(dim=16, depth=1, heads=2, position="absolute"))
    with pytest.raises(ValueError, match="token id 10 out of range"):
        net(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        net(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("kwargs", [{}, {"post_log_scale": 1 / 8}, {"bias_init": 2.0, "post_log_scale": 1 / 16}])
def test_alias_starts_with_x_transformers_own_forget_gate(kwargs):
    """attn_data_dependent_alibi=True swaps the import without changing the initial time scale: the gate of
    x-transformers 2.31.10's own DataDependentAlibi (bias 5 by default; post_log_scale 1/8 -> f ~ 0.99916)
    on the same input and weights; position="fox" keeps the FoX paper's bias 0 (f = 0.5)."""
    xt = pytest.importorskip("x_transformers")
    from xforget.nn.bias.forget_gate import ForgetGate

    torch.manual_seed(0)
    theirs = xt.Decoder(dim=32, depth=1, heads=4, attn_data_dependent_alibi=True,
                        attn_data_dependent_alibi_kwargs=dict(kwargs))
    dda = next(m for m in theirs.modules() if isinstance(m, xt.x_transformers.DataDependentAlibi))
    ours = Decoder(dim=32, depth=1, heads=4, attn_data_dependent_alibi=True, attn_data_dependent_alibi_kwargs=dict(kwargs))
    gate = next(m for m in ours.modules() if isinstance(m, ForgetGate))
    linear = dda.to_forget_gates[0]
    torch.testing.assert_close(gate.to_gate_logits.bias, linear.bias)  # the initial bias itself
    with torch.no_grad():
        gate.to_gate_logits.weight.copy_(linear.weight)
    x = torch.randn(2, 7, 32)
    expected = dda.to_forget_gates(x).double() * dda.post_log_scale  # (b, h, n) log f, their module
    torch.testing.assert_close(gate(x).log_fgate.double(), expected, rtol=1e-6, atol=1e-7)
    if kwargs == {"post_log_scale": 1 / 8}:
        f0 = torch.sigmoid(torch.tensor(5.0, dtype=torch.float64)) ** (1 / 8)
        assert float(f0) == pytest.approx(0.99916, abs=1e-5)
        assert torch.allclose(gate.to_gate_logits.bias.double(), torch.full((4,), 5.0, dtype=torch.float64))
    paper = next(m for m in Decoder(dim=32, depth=1, heads=4, position="fox").modules() if isinstance(m, ForgetGate))
    assert torch.equal(paper.to_gate_logits.bias, torch.zeros(4))  # FoX paper: f = sigmoid(0) = 0.5
