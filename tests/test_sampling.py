"""Sampling filters: edge cases from DESIGN.md section 4.6."""

import pytest
import torch

from xforget.sampling import min_p_filter, sample_next, top_k_filter, top_p_filter


def _logits(vocab=20, rows=4):
    return torch.randn(rows, vocab) * 3


def test_temperature_zero_is_argmax():
    logits = _logits()
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))


@pytest.mark.parametrize("k", [0, None, 20, 10**6])
def test_top_k_off_values_keep_everything(k):
    logits = _logits()
    assert torch.equal(top_k_filter(logits, k), logits.float())


def test_top_k_keeps_exactly_k_and_one_is_greedy():
    logits = _logits()
    kept = torch.isfinite(top_k_filter(logits, 5)).sum(-1)
    assert torch.equal(kept, torch.full((4,), 5))
    for _ in range(5):
        assert torch.equal(sample_next(logits, top_k=1), logits.argmax(-1))


@pytest.mark.parametrize("p", [0.0, 1e-8])
def test_tiny_top_p_keeps_only_the_top_token(p):
    logits = _logits()
    out = top_p_filter(logits, p)
    assert torch.equal(torch.isfinite(out).sum(-1), torch.ones(4, dtype=torch.long))
    assert torch.equal(out.argmax(-1), logits.argmax(-1))


def test_top_p_one_keeps_all_and_mass_rule():
    logits = _logits()
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    p = 0.7
    out = top_p_filter(logits, p)
    probs = logits.double().softmax(-1)
    for r in range(4):
        order = probs[r].argsort(descending=True)
        cum = probs[r][order].cumsum(0)
        n_keep = int((cum < p).sum()) + 1  # smallest prefix reaching p
        assert torch.isfinite(out[r]).sum() == n_keep


def test_top_k_then_top_p_renormalises():
    logits = _logits(vocab=50)
    k_only = top_k_filter(logits, 10)
    both = top_p_filter(k_only, 0.5)
    # top_p acts on the renormalised top-k distribution: the kept set is a prefix of it reaching 0.5
    probs = k_only.softmax(-1)
    for r in range(4):
        kept = probs[r][torch.isfinite(both[r])]
        assert kept.sum() >= 0.5 - 1e-6
        assert kept.sum() - kept.min() < 0.5 + 1e-6


def test_min_p_keeps_top_and_threshold():
    logits = _logits()
    out = min_p_filter(logits, 0.2)
    probs = logits.softmax(-1)
    assert torch.equal(torch.isfinite(out), probs >= 0.2 * probs.amax(-1, keepdim=True))


def test_bf16_logits_are_filtered_in_fp32():
    logits = _logits().bfloat16()
    assert top_k_filter(logits, 3).dtype == torch.float32
    assert torch.equal(sample_next(logits, temperature=0.0), logits.float().argmax(-1))
    tok = sample_next(logits, temperature=1.0, top_k=3, top_p=0.9)
    assert tok.dtype == torch.int64 and tok.shape == (4,)


def test_negative_temperature_rejected():
    with pytest.raises(ValueError, match="temperature"):
        sample_next(_logits(), temperature=-1.0)
