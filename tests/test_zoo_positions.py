"""Positional schemes of the zoo: float64 references and invariances, cache and padding exactness."""

import math

import pytest
import torch
import torch.nn.functional as F

from xforget import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper
from xforget.nn.attention import Attention
from xforget.nn.bias import t5_bucket
from xforget.nn.embeddings import ScaledSinusoidalEmbedding
from xforget.nn.rotary import RotaryEmbedding


# ----------------------------------------------------------------------------- rotary, xPos, sinusoidal


def test_rotary_scores_depend_only_on_distance_and_partial_rotary_keeps_the_rest():
    rot = RotaryEmbedding(16, rotary_dim=8, base=100.0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(i, j):
        return (rot(q.float(), torch.tensor([i])) * rot(k.float(), torch.tensor([j]))).sum().item()

    for delta in (0, 1, 5):
        scores = [score(j + delta, j) for j in (0, 3, 17, 40)]
        assert max(scores) - min(scores) < 1e-4
    assert abs(score(5, 0) - score(6, 0)) > 1e-3  # but it does depend on the distance
    out = rot(q.float(), torch.tensor([7]))
    torch.testing.assert_close(out[..., 8:], q.float()[..., 8:])  # unrotated channels untouched
    torch.testing.assert_close(out[..., :8].norm(), q.float()[..., :8].norm())  # a rotation


def test_xpos_equals_rotary_times_distance_decay_float64():
    b_scale = 4.0
    xpos = RotaryEmbedding(8, xpos=True, xpos_scale_base=b_scale)
    plain = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    zeta = torch.tensor([(2 * p + 0.4 * 8) / (1.4 * 8) for p in range(4)], dtype=torch.float64)
    for i, j in ((3, 1), (9, 2), (5, 5)):
        got = (xpos(q, torch.tensor([i])) * xpos(k, torch.tensor([j]), is_key=True)).sum().double()
        scaled_q = q.double() * zeta.repeat_interleave(2) ** ((i - j) / b_scale)  # pair p scaled by zeta_p^((i-j)/B)
        want = (plain(scaled_q.float(), torch.tensor([i])).double() * plain(k, torch.tensor([j])).double()).sum()
        assert abs(got.item() - want.item()) < 1e-4


def test_scaled_sinusoidal_formula():
    emb = ScaledSinusoidalEmbedding(8)
    out = emb(torch.tensor([0, 3, 11]))
    for row, p in enumerate((0, 3, 11)):
        for c in range(4):
            w = 10000 ** (-c / 4)
            assert abs(out[row, c].item() - math.sin(p * w) * 8**-0.5) < 1e-6
            assert abs(out[row, 4 + c].item() - math.cos(p * w) * 8**-0.5) < 1e-6


# ----------------------------------------------------------------------------- T5 buckets


def t5_bucket_formula(n: int, causal: bool, num_buckets: int, max_distance: int) -> int:
    """Mesh-tensorflow's _relative_position_bucket written out for one signed distance n = i - j."""
    ret = 0
    if not causal:
        num_buckets //= 2
        if n < 0:
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    exact = num_buckets // 2
    if n < exact:
        return ret + n
    large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20)])
def test_t5_buckets_match_the_formula(causal, num_buckets, max_distance):
    n = torch.arange(-300, 301)
    got = t5_bucket(n, causal=causal, num_buckets=num_buckets, max_distance=max_distance).tolist()
    want = [t5_bucket_formula(int(v), causal, num_buckets, max_distance) for v in n]
    assert got == want
    # hand-checked values (causal, 32 buckets, 128): exact below 16, log-spaced to 31
    if causal and num_buckets == 32:
        assert [got[300 + d] for d in (0, 1, 15, 16, 31, 127, 128, 1000 - 700)] == [0, 1, 15, 16, 21, 31, 31, 31]


# ----------------------------------------------------------------------------- matrix biases vs float64


def _layer_f64(attn: Attention, x: torch.Tensor, bias: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Attention layer output from its weights in float64 with an explicit (b|1, h, n, n) bias."""
    x = x.double()
    b, n, _ = x.shape
    h, d = attn.heads, attn.dim_head

    def split(w):
        return (x @ w.double().T).view(b, n, -1, d).transpose(1, 2)

    q, k, v = split(attn.to_q.weight), split(attn.to_k.weight), split(attn.to_v.weight)
    s = q @ k.transpose(-1, -2) / math.sqrt(d) + bias.double()
    if causal:
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    out = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h * d)
    return out @ attn.to_out.weight.double().T


@pytest.mark.parametrize("causal", [True, False])
def test_t5_attention_matches_float64(causal):
    attn = Attention(32, 4, causal=causal, bias="t5", num_buckets=8, max_distance=16)
    torch.nn.init.normal_(attn.bias.table.weight, std=1.0)
    x = torch.randn(2, 24, 32)
    pos = torch.arange(24)
    buckets = torch.tensor([[t5_bucket_formula(i - j, causal, 8, 16) for j in range(24)] for i in range(24)])
    bias = attn.bias.table.weight.double()[buckets].permute(2, 0, 1)[None]
    out, _, _ = attn(x, positions=pos)
    # measured 2.3e-7 vs the reference
    torch.testing.assert_close(out.double(), _layer_f64(attn, x, bias, causal), atol=2e-6, rtol=0)


def test_dynamic_bias_is_an_mlp_of_the_distance_float64():
    attn = Attention(32, 4, causal=True, bias="dynamic", dynamic_bias_log_distance=True)
    x = torch.randn(1, 12, 32)
    mlp = attn.bias.mlp.double()
    dist = torch.arange(12)[:, None] - torch.arange(12)[None, :]
    feat = (dist.sign() * torch.log(dist.abs() + 1.0)).double()[..., None]
    bias = mlp(feat).permute(2, 0, 1)[None]
    attn.bias.mlp.float()
    out, _, _ = attn(x, positions=torch.arange(12))
    # measured 1.4e-7 vs the reference
    torch.testing.assert_close(out.double(), _layer_f64(attn, x, bias), atol=1.5e-6, rtol=0)


def test_fox_per_row_matches_explicit_sums_float64():
    # divisor 3 != sqrt(per_row_dim_head) = 2, so swapping the logit scale and the divisor shows
    attn = Attention(32, 2, causal=True, bias="fox_per_row", per_row_dim_head=4, forget_gate_divisor=3.0)
    x = torch.randn(1, 9, 32)
    qk = (x.double() @ attn.bias.to_qk.weight.double().T).view(1, 9, 2, 2, 4)
    qs, ks = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2)  # (1, h, n, 4)
    g = F.logsigmoid(qs @ ks.transpose(-1, -2) / math.sqrt(4)) / 3.0  # g[i, t]
    bias = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    for i in range(9):
        for j in range(i + 1):
            bias[..., i, j] = g[..., i, j:i].sum(-1)  # sum over t = j .. i-1
    out, _, _ = attn(x, positions=torch.arange(9))
    # measured 2.1e-7 vs the reference
    torch.testing.assert_close(out.double(), _layer_f64(attn, x, bias), atol=2e-6, rtol=0)


def test_matrix_bias_is_shared_across_layers_but_gates_are_not():
    t5 = Decoder(dim=32, depth=3, heads=4, position="t5")
    assert len({id(b.attn.bias) for b in t5.blocks}) == 1
    fox = Decoder(dim=32, depth=3, heads=4, position="fox_per_row")
    assert len({id(b.attn.bias) for b in fox.blocks}) == 3


# ----------------------------------------------------------------------------- combinations and errors


@pytest.mark.parametrize("position,names", [
    (["alibi", "t5"], ("'alibi'", "'t5'")),
    (["absolute", "sinusoidal"], ("'absolute'", "'sinusoidal'")),
    (["none", "fox"], ("'none'", "'fox'")),
    (["fox", "fox_per_row"], ("'fox'", "'fox_per_row'")),
])
def test_meaningless_combinations_name_both(position, names):
    with pytest.raises(ValueError) as err:
        Decoder(dim=16, depth=1, heads=2, position=position)
    assert all(n in str(err.value) for n in names)


def test_meaningful_combinations_build():
    for position in (["fox", "rotary"], ["absolute", "alibi"], ["sinusoidal", "t5"], ["rotary", "dynamic"]):
        net = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2, position=position))
        x = torch.randint(0, 20, (1, 5))
        full = net(x)
        assert full.shape == (1, 5, 20)
        # the combination is exact under the KV cache: prefill 3 + decode 2 equals the full forward
        head, cache = net(x[:, :3], return_cache=True)
        tail, _ = net(x[:, 3:], cache=cache, return_cache=True)
        # measured 3.0e-7 vs the reference
        torch.testing.assert_close(torch.cat((head, tail), 1), full, atol=3e-6, rtol=0)


def test_scheme_options_need_their_scheme():
    with pytest.raises(ValueError, match="rotary_xpos.*'rotary'"):
        Decoder(dim=16, depth=1, heads=2, position="fox", rotary_xpos=True)
    with pytest.raises(ValueError, match="num_buckets.*'t5'"):
        Decoder(dim=16, depth=1, heads=2, position="alibi", num_buckets=16)
    with pytest.raises(ValueError, match="fox_per_row.*causal"):
        Encoder(dim=16, depth=1, heads=2, position="fox_per_row")
    with pytest.raises(ValueError, match="rotary_xpos=true needs causal"):
        Encoder(dim=16, depth=1, heads=2, position="rotary", rotary_xpos=True)


# ----------------------------------------------------------------------------- cache and padding


CACHED = [
    dict(position="t5"),
    dict(position="dynamic"),
    dict(position="fox_per_row", forget_gate_divisor=1.0),
    dict(position="sinusoidal"),
    dict(position="rotary", rotary_xpos=True, rotary_dim=4),
    dict(position=["fox", "rotary"], rotary_dim=4),
]


def _net(**kw):
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=64, max_seq_len=64, attn_layers=Decoder(dim=32, depth=2, heads=4, **kw)).eval()


@pytest.mark.parametrize("kw", CACHED, ids=lambda kw: str(kw["position"]))
def test_prefill_decode_and_crop_equal_full_forward(kw):
    net = _net(**kw)
    x = torch.randint(0, 64, (2, 12))
    full = net(x)
    logits, cache = net(x[:, :7], return_cache=True)
    steps = [logits]
    for t in range(7, 12):
        logits, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    if kw["position"] in ("t5", "dynamic"):  # relative, one layer: a cropped cache is a fresh window
        one = TransformerWrapper(num_tokens=64, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=4, **kw)).eval()
        _, cache = one(x[:, :10], return_cache=True)
        out, _ = one(x[:, 10:11], cache=cache.crop(4), return_cache=True)
        torch.testing.assert_close(out[:, -1], one(x[:, 6:11])[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", CACHED[:3], ids=lambda kw: str(kw["position"]))
def test_ragged_batched_generation_equals_unbatched(kw):
    ar = AutoregressiveWrapper(_net(**kw))
    prompts = [torch.randint(0, 64, (3,)), torch.randint(0, 64, (6,))]
    batched = ar.generate(prompts, 5, temperature=0.0)
    for r, p in enumerate(prompts):
        assert torch.equal(batched[r], ar.generate(p[None], 5, temperature=0.0)[0])


@pytest.mark.parametrize("kw", [
    dict(position="t5"), dict(position="dynamic"), dict(position=["sinusoidal", "alibi"]),
    dict(position="fox", num_mem_kv=2, kv_shift=True), dict(position="fox", softclamp_logits=3.0, kv_heads=2),
], ids=lambda kw: str(kw))
@pytest.mark.parametrize("layers", [Decoder, Encoder])
def test_right_padding_equals_unbatched(kw, layers):
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=50, max_seq_len=32, attn_layers=layers(dim=32, depth=2, heads=4, **kw))
    seqs = [torch.randint(0, 50, (n,)) for n in (9, 4)]
    batch = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    for r, s in enumerate(seqs):
        batch[r, : len(s)], mask[r, : len(s)] = s, True
    batched = net(batch, mask=mask)
    for r, s in enumerate(seqs):
        # measured 6.3e-7 vs the reference
        torch.testing.assert_close(batched[r, : len(s)], net(s[None])[0], atol=5e-6, rtol=0)
