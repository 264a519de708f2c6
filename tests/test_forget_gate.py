"""The FoX forget gate (bias builder + attention) against a float64 reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from reference import attention_f64, forget_gate_bias_f64
from xforget.nn.attention import Attention
from xforget.nn.bias import ForgetGate


def _split(t, heads):
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)


@pytest.mark.parametrize("divisor", [1.0, 8.0, 16.0])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias_init", [0.0, 5.0, -3.0])
def test_attention_layer_with_forget_gate_matches_float64(divisor, causal, bias_init):
    dim, heads, n, b = 32, 4, 24, 2
    attn = Attention(dim, heads, causal=causal, bias="fox",
                     forget_gate_divisor=divisor, forget_gate_bias_init=bias_init)
    with torch.no_grad():  # spread the gate logits so some heads decay strongly
        attn.bias.to_gate_logits.weight.mul_(8.0)
    x = torch.randn(b, n, dim)
    out, _, _ = attn(x, positions=torch.arange(n))

    # float64 reference: gates, explicit-sum bias, softmax
    xd = x.double()
    lin = attn.bias.to_gate_logits
    logits = (xd @ lin.weight.double().T + lin.bias.double()).transpose(1, 2)
    log_gates = F.logsigmoid(logits) / divisor
    log_f, log_g = (log_gates, None) if causal else log_gates.chunk(2, dim=1)
    D = forget_gate_bias_f64(log_f, log_g, causal)
    q, k, v = (_split(xd @ w.weight.double().T, heads) for w in (attn.to_q, attn.to_k, attn.to_v))
    ref = attention_f64(q, k, v, D)
    ref = ref.transpose(1, 2).reshape(b, n, -1) @ attn.to_out.weight.double().T

    assert log_f.min() < -1.0 or divisor > 1 or bias_init > 0  # strong decay is exercised
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-4)


def test_gate_values_are_logsigmoid_over_divisor_and_zero_at_pads():
    gate = ForgetGate(dim=8, heads=2, causal=True, forget_gate_divisor=8.0, forget_gate_bias_init=0.0)
    x = torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, True, False, False]])
    g = gate(x, mask).log_fgate
    expected = F.logsigmoid((x.double() @ gate.to_gate_logits.weight.double().T + gate.to_gate_logits.bias.double())) / 8
    torch.testing.assert_close(g[..., :3].double(), expected.transpose(1, 2)[..., :3])
    assert torch.all(g[..., 3:] == 0)
    assert g.dtype == torch.float32


def test_gate_is_stable_for_very_negative_logits():
    gate = ForgetGate(dim=4, heads=1, causal=True, forget_gate_bias_init=-200.0)
    with torch.no_grad():
        gate.to_gate_logits.weight.zero_()
    g = gate(torch.zeros(1, 3, 4)).log_fgate
    assert torch.isfinite(g).all() and torch.allclose(g, torch.full_like(g, -200.0))


def test_bad_divisor_is_rejected():
    with pytest.raises(ValueError, match="forget_gate_divisor"):
        ForgetGate(dim=4, heads=1, causal=True, forget_gate_divisor=0.0)


def test_bias_init_sets_initial_gate():
    gate = ForgetGate(dim=4, heads=2, causal=True, forget_gate_bias_init=5.0)
    with torch.no_grad():
        gate.to_gate_logits.weight.zero_()
    g = gate(torch.randn(1, 3, 4)).log_fgate
    torch.testing.assert_close(g, torch.full_like(g, math.log(torch.sigmoid(torch.tensor(5.0)).item())))


def test_initial_gate_value_quoted_in_the_readme():
    """README: ``forget_gate_divisor=8, forget_gate_bias_init=5.0  # f = sigmoid(5) ** (1/8) ~ 0.9992 at init``."""
    import math
    import re
    from pathlib import Path

    from xforget.nn.bias.forget_gate import ForgetGate

    gate = ForgetGate(dim=8, heads=2, causal=True, forget_gate_divisor=8, forget_gate_bias_init=5.0)
    f = gate(torch.zeros(1, 3, 8)).log_fgate.exp()  # zero input: the bias alone, as at the start of training
    expected = (1.0 / (1.0 + math.exp(-5.0))) ** (1 / 8)  # float64, written out
    assert torch.allclose(f.double(), torch.full_like(f.double(), expected), rtol=0, atol=1e-7)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "forget_gate_bias_init=5.0" in x and "#" in x)
    quoted = float(re.search(r"~ (0\.\d+) at init", line).group(1))
    assert abs(quoted - expected) < 5e-5, (quoted, expected)
