"""Attention options of the zoo: float64 references, invariances, cache and padding exactness."""

import math

import pytest
import torch
import torch.nn.functional as F
from reference import forget_gate_bias_f64

from xforget import AutoregressiveWrapper, Decoder, TransformerWrapper
from xforget.nn.attention import Attention
from xforget.nn.kv_shift import KVShift
from xforget.nn.norms import HeadRMSNorm


def _proj(x, linear, heads_dim):
    b, n, _ = x.shape
    return (x.double() @ linear.weight.double().T).view(b, n, -1, heads_dim).transpose(1, 2)


def _fox_gates(attn, x):
    return F.logsigmoid(x.double() @ attn.bias.to_gate_logits.weight.double().T + attn.bias.to_gate_logits.bias.double()).transpose(1, 2)


# ----------------------------------------------------------------------------- grouped-query attention


def test_kv_heads_equal_heads_is_plain_attention():
    torch.manual_seed(0)
    plain = Attention(32, 4, bias="fox")
    grouped = Attention(32, 4, bias="fox", kv_heads=4)
    grouped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(grouped(x, positions=torch.arange(10))[0], plain(x, positions=torch.arange(10))[0])


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_equals_multi_head_with_shared_kv_weights(kv_heads):
    """Query head i reads KV head i % kv_heads: a MHA layer whose head i has those K/V weights is the same function."""
    torch.manual_seed(0)
    gqa = Attention(32, 4, bias="fox", kv_heads=kv_heads, qk_norm=True)
    mha = Attention(32, 4, bias="fox", qk_norm=True)
    state = gqa.state_dict()
    for name in ("to_k.weight", "to_v.weight"):
        per_kv = state[name].view(kv_heads, 8, 32)
        state[name] = torch.stack([per_kv[i % kv_heads] for i in range(4)]).reshape(32, 32)
    with torch.no_grad():
        gqa.k_norm.gamma.normal_()
    state["k_norm.gamma"] = torch.stack([gqa.k_norm.gamma[i % kv_heads] for i in range(4)]).detach()
    mha.load_state_dict(state)
    x = torch.randn(2, 10, 32)
    # measured 0 vs the reference
    torch.testing.assert_close(gqa(x, positions=torch.arange(10))[0], mha(x, positions=torch.arange(10))[0], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- memory key/values


def _memory_reference(attn, x, causal, softclamp=None):
    """float64: [memory keys (bias 0, always visible); sequence keys (FoX decay D, causal mask)]."""
    b, n, _ = x.shape
    d = attn.dim_head
    q, k, v = (_proj(x, lin, d) for lin in (attn.to_q, attn.to_k, attn.to_v))
    g = _fox_gates(attn, x)
    h = attn.heads
    log_f, log_g = (g, None) if causal else (g[:, :h], g[:, h:])
    D = forget_gate_bias_f64(log_f, log_g, causal)
    s_seq = q @ k.transpose(-1, -2) / math.sqrt(d) + D
    s_mem = q @ attn.memory.k.double()[None].transpose(-1, -2) / math.sqrt(d)
    s = torch.cat((s_mem.expand(b, -1, -1, -1), s_seq), -1)
    if softclamp is not None:  # clamp first, mask after (tanh(-inf) would unmask)
        masked = s.isinf()
        s = (torch.tanh(s.nan_to_num(neginf=0.0) / softclamp) * softclamp).masked_fill(masked, -math.inf)
    v_all = torch.cat((attn.memory.v.double()[None].expand(b, -1, -1, -1), v), 2)
    out = (s.softmax(-1) @ v_all).transpose(1, 2).reshape(b, n, -1)
    return out @ attn.to_out.weight.double().T


@pytest.mark.parametrize("causal,softclamp", [(True, None), (True, 3.0), (False, None)])
def test_memory_kv_is_never_decayed_float64(causal, softclamp):
    torch.manual_seed(0)
    attn = Attention(32, 2, causal=causal, bias="fox", num_mem_kv=3, softclamp_logits=softclamp,
                     forget_gate_bias_init=-3.0)  # strong decay: f ~ 0.05
    x = torch.randn(2, 12, 32)
    out = attn(x, positions=torch.arange(12))[0]
    # measured 7.3e-7 vs the reference
    torch.testing.assert_close(out.double(), _memory_reference(attn, x, causal, softclamp), atol=5e-6, rtol=0)
    # decayed memory would be a different function: the memory dominates far-back rows
    with torch.no_grad():
        attn.memory.v.mul_(2.0)
    assert (attn(x, positions=torch.arange(12))[0] - out)[:, -1].abs().max() > 1e-2


# ----------------------------------------------------------------------------- QK-norm, output norm, output gate


def test_head_rmsnorm_formula_and_per_head_weights():
    norm = HeadRMSNorm(3, 4)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(3, 4))
    x = torch.randn(2, 3, 5, 4)
    want = x.double() / x.double().pow(2).mean(-1, keepdim=True).sqrt() * (1 + norm.gamma.double()[:, None])
    torch.testing.assert_close(norm(x).double(), want, atol=1e-6, rtol=1e-6)


def test_qk_norm_weights_differ_per_head_after_a_step():
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1, heads=4, position="fox", qk_norm=True))
    attn = net.attn_layers.blocks[0].attn
    assert attn.q_norm.gamma.shape == (4, 8) and attn.k_norm.gamma.shape == (4, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randint(0, 32, (2, 12))
    F.cross_entropy(net(x[:, :-1]).transpose(1, 2), x[:, 1:]).backward()
    opt.step()
    for w in (attn.q_norm.gamma, attn.k_norm.gamma):
        assert (w - w[:1]).abs().amax(-1)[1:].min() > 1e-6  # every head moved differently


def test_output_gate_at_plus_inf_is_a_no_op():
    torch.manual_seed(0)
    gated = Attention(32, 4, bias="alibi", output_gate=True)
    plain = Attention(32, 4, bias="alibi")
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("to_gate")})
    with torch.no_grad():
        gated.to_gate.bias.fill_(float("inf"))
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(gated(x, positions=torch.arange(9))[0], plain(x, positions=torch.arange(9))[0])
    with torch.no_grad():
        gated.to_gate.bias.zero_()
        gated.to_gate.weight.zero_()  # gate 0.5 everywhere halves the output
    torch.testing.assert_close(gated(x, positions=torch.arange(9))[0], 0.5 * plain(x, positions=torch.arange(9))[0])


def test_output_norm_normalises_each_head_before_the_projection():
    torch.manual_seed(0)
    attn = Attention(16, 2, output_norm=True)
    with torch.no_grad():
        attn.out_norm.gamma.normal_()
    x = torch.randn(1, 6, 16)
    out = attn(x, positions=torch.arange(6))[0]
    q, k, v = (_proj(x, lin, 8) for lin in (attn.to_q, attn.to_k, attn.to_v))
    s = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), -math.inf)
    o = s.softmax(-1) @ v
    o = o / o.pow(2).mean(-1, keepdim=True).sqrt() * attn.out_norm.gain.double()[:, None]
    want = o.transpose(1, 2).reshape(1, 6, 16) @ attn.to_out.weight.double().T
    torch.testing.assert_close(out.double(), want, atol=2e-6, rtol=0)  # measured 2.7e-7 vs the reference


# ----------------------------------------------------------------------------- softclamp and dropout


def test_softclamp_logits_float64():
    torch.manual_seed(0)
    attn = Attention(16, 2, bias="fox", softclamp_logits=0.5)
    x = torch.randn(1, 7, 16) * 3
    q, k, v = (_proj(x, lin, 8) for lin in (attn.to_q, attn.to_k, attn.to_v))
    D = forget_gate_bias_f64(_fox_gates(attn, x), None, True)
    s = q @ k.transpose(-1, -2) / math.sqrt(8) + D.nan_to_num(neginf=0.0)
    s = (torch.tanh(s / 0.5) * 0.5).masked_fill(D.isinf(), -math.inf)  # clamp, then the causal mask
    want = (s.softmax(-1) @ v).transpose(1, 2).reshape(1, 7, 16) @ attn.to_out.weight.double().T
    # measured 2.3e-7 vs the reference
    torch.testing.assert_close(attn(x, positions=torch.arange(7))[0].double(), want, atol=2e-6, rtol=0)


def test_attention_dropout_only_while_training():
    torch.manual_seed(0)
    attn = Attention(16, 2, bias="fox", dropout=0.5)
    plain = Attention(16, 2, bias="fox")
    plain.load_state_dict(attn.state_dict())
    x = torch.randn(2, 8, 16)
    attn.eval()
    torch.testing.assert_close(attn(x, positions=torch.arange(8))[0], plain(x, positions=torch.arange(8))[0])
    attn.train()
    a, b = attn(x, positions=torch.arange(8))[0], attn(x, positions=torch.arange(8))[0]
    assert (a - b).abs().max() > 1e-4
    # averaged over many masks, inverted dropout is unbiased
    many = x[:1].expand(2000, -1, -1)
    mean = attn(many, positions=torch.arange(8))[0].mean(0)
    assert (mean - plain(x[:1], positions=torch.arange(8))[0][0]).abs().max() < 0.1


# ----------------------------------------------------------------------------- KV-shift


def test_kv_shift_formula_padding_and_state_float64():
    torch.manual_seed(0)
    shift = KVShift(8, 2)
    with torch.no_grad():
        shift.to_mix.weight.normal_()
    x = torch.randn(1, 5, 8)
    k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    a = torch.sigmoid(x.double() @ shift.to_mix.weight.double().T + shift.to_mix.bias.double()).transpose(1, 2)[..., None]
    ks, vs, state = shift(k, v, x, None, None)
    for t, shifted in ((k, ks), (v, vs)):  # the same mix for keys and values
        prev = torch.cat((torch.zeros(1, 2, 1, 4, dtype=torch.float64), t.double()[:, :, :-1]), 2)
        torch.testing.assert_close(shifted.double(), a * prev + (1 - a) * t.double(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(state.k, k[:, :, -1:])
    torch.testing.assert_close(state.v, v[:, :, -1:])
    # a pad in the middle is skipped: token 3 shifts from token 1
    mask = torch.tensor([[True, True, False, True, True]])
    ks_pad, vs_pad, _ = shift(k, v, x, mask, None)
    for t, shifted in ((k, ks_pad), (v, vs_pad)):
        want3 = a[:, :, 3] * t.double()[:, :, 1] + (1 - a[:, :, 3]) * t.double()[:, :, 3]
        torch.testing.assert_close(shifted[:, :, 3].double(), want3, atol=1e-6, rtol=1e-6)
    # the carried state is the last real token's: continuing from it equals the joint call
    ks2, vs2, _ = shift(k[:, :, 3:], v[:, :, 3:], x[:, 3:], None, shift(k[:, :, :3], v[:, :, :3], x[:, :3], None, None)[2])
    torch.testing.assert_close(ks2, ks[:, :, 3:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(vs2, vs[:, :, 3:], atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- cache and padding


CACHED = [
    dict(position="fox", kv_shift=True),
    dict(position="fox", num_mem_kv=2, forget_gate_bias_init=-2.0),
    dict(position="alibi", num_mem_kv=2, kv_heads=2),
    dict(position="fox", kv_heads=1, qk_norm=True, output_gate=True, output_norm=True, kv_shift=True),
    dict(position=["fox", "rotary"], softclamp_logits=5.0, kv_heads=2),
    dict(position="fox", kv_heads=2, value_residual=True, value_residual_mix="learned"),
]


def _net(**kw):
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=64, max_seq_len=64, attn_layers=Decoder(dim=32, depth=2, heads=4, **kw)).eval()


@pytest.mark.parametrize("kw", CACHED, ids=lambda kw: "-".join(k for k in kw if k != "position"))
def test_cached_decoding_equals_full_forward(kw):
    net = _net(**kw)
    x = torch.randint(0, 64, (2, 11))
    full = net(x)
    logits, cache = net(x[:, :6], return_cache=True)
    steps = [logits]
    for t in range(6, 11):
        logits, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", CACHED[:3], ids=lambda kw: "-".join(k for k in kw if k != "position"))
def test_ragged_batched_generation_equals_unbatched(kw):
    ar = AutoregressiveWrapper(_net(**kw))
    prompts = [torch.randint(0, 64, (2,)), torch.randint(0, 64, (6,))]
    batched = ar.generate(prompts, 5, temperature=0.0)
    for r, p in enumerate(prompts):
        assert torch.equal(batched[r], ar.generate(p[None], 5, temperature=0.0)[0])


def test_value_residual_learned_mix_broadcasts_with_grouped_kv_heads():
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=32, max_seq_len=16, attn_layers=Decoder(
        dim=32, depth=3, heads=4, kv_heads=2, position="fox", value_residual=True, value_residual_mix="learned"))
    mix = net.attn_layers.blocks[1].attn.value_residual
    assert mix.to_lambda.out_features == 2  # one lambda per KV head
    net(torch.randint(0, 32, (2, 10))).logsumexp(-1).sum().backward()
    assert mix.to_lambda.weight.grad.abs().sum() > 0
