"""ALiBi slopes against the paper, and the ALiBi layer against a float64 |i-j| reference."""

import pytest
import torch

from reference import alibi_slopes_paper, attention_f64
from xforget.nn.attention import Attention
from xforget.nn.bias import alibi_slopes


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 6, 8, 12, 16, 24])
def test_slopes_match_paper(heads):
    assert alibi_slopes(heads) == pytest.approx(alibi_slopes_paper(heads), rel=1e-12)


def test_slopes_written_out():
    assert alibi_slopes(8) == pytest.approx([1 / 2 ** k for k in range(1, 9)])
    # 6 heads: the 4-head set (2^-2, 2^-4, 2^-6, 2^-8), then 2^-1 and 2^-3 from the 8-head set
    assert alibi_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    assert alibi_slopes(3) == pytest.approx([2**-4, 2**-8, 2**-2])


def _split(t, heads):
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads,alibi_heads", [(6, None), (4, 2)])
def test_alibi_attention_matches_float64(causal, heads, alibi_heads):
    dim, n = 6 * heads, 17
    attn = Attention(dim, heads, causal=causal, bias="alibi", alibi_num_heads=alibi_heads)
    x = torch.randn(2, n, dim)
    out, _, _ = attn(x, positions=torch.arange(n))
    slopes = torch.zeros(heads, dtype=torch.float64)
    na = heads if alibi_heads is None else alibi_heads
    slopes[:na] = torch.tensor(alibi_slopes_paper(na), dtype=torch.float64)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    bias = -slopes[:, None, None] * (i - j).abs().double()
    if causal:
        bias = bias.masked_fill(j > i, float("-inf"))
    xd = x.double()
    q, k, v = (_split(xd @ w.weight.double().T, heads) for w in (attn.to_q, attn.to_k, attn.to_v))
    ref = attention_f64(q, k, v, bias).transpose(1, 2).reshape(2, n, -1) @ attn.to_out.weight.double().T
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)  # measured 2.3e-7 vs the reference
