"""Sampling filters: edge cases from DESIGN.md section 4.6."""

import pytest
import torch

from xforget.models.sampling import min_p_filter, sample_next, top_k_filter, top_p_filter


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


# --------------------------------------------------------------------------- the sampled distribution


def _expected_distribution(logits: torch.Tensor, temperature: float, top_k=None, top_p=None, min_p=None):
    """float64 reference, Hugging Face order: temperature, then top-k, top-p (renormalised), min-p."""
    probs = (logits.double() / temperature).softmax(-1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    order = probs.argsort(descending=True).tolist()
    if top_k:
        keep[:] = False
        keep[order[:top_k]] = True
    if top_p is not None:
        mass = probs * keep / (probs * keep).sum()
        total, nucleus = 0.0, torch.zeros_like(keep)
        for i in order:  # smallest prefix of the (renormalised) survivors whose mass reaches top_p
            if keep[i] and total < top_p:
                nucleus[i] = True
                total += float(mass[i])
        keep &= nucleus
    if min_p is not None:
        keep &= probs >= min_p * probs.max()
    out = torch.where(keep, probs, 0.0)
    return out / out.sum()


def _frequencies(logits: torch.Tensor, draws: int, seed: int = 0, **kwargs) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = sample_next(logits.expand(draws, -1), generator=g, **kwargs)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / draws


LOGITS8 = torch.tensor([2.0, 1.6, 1.1, 0.9, 0.3, -0.2, -0.8, -1.5])


@pytest.mark.parametrize("filters", [{}, {"top_k": 5}, {"top_p": 0.8}, {"min_p": 0.15},
                                     {"top_k": 6, "top_p": 0.9, "min_p": 0.05}])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_frequencies_follow_the_tempered_filtered_softmax(temperature, filters):
    draws = 40_000
    expected = _expected_distribution(LOGITS8, temperature, **filters)
    freq = _frequencies(LOGITS8, draws, temperature=temperature, **filters)
    assert torch.all(freq[expected == 0] == 0), (freq, expected)  # nothing outside the kept set
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-12), (freq, expected)


def test_temperature_changes_the_distribution_beyond_the_sampling_noise():
    draws = 40_000
    cold = _frequencies(LOGITS8, draws, temperature=0.5)
    hot = _frequencies(LOGITS8, draws, temperature=2.0)
    plain = _frequencies(LOGITS8, draws, temperature=1.0)
    noise = 5 * (0.25 / draws) ** 0.5
    assert cold[0] - plain[0] > 8 * noise and plain[0] - hot[0] > 5 * noise  # colder = sharper


def test_temperature_applies_before_min_p_as_in_hugging_face():
    # issue 11: min_p=0.2 at temperature 0.5 keeps {i: softmax(l/0.5)_i >= 0.2 max}, i.e. l_i >= l_max + 0.5 ln 0.2
    logits = torch.tensor([0.0, -0.5, -1.0, -1.5, -3.0])
    hf_set = {0, 1}  # -0.5 >= -0.80 > -1.0; filtering before the temperature would also keep tokens 2 and 3
    g = torch.Generator().manual_seed(0)
    tokens = sample_next(logits.expand(4000, -1), temperature=0.5, min_p=0.2, generator=g)
    assert set(tokens.tolist()) == hf_set


def test_temperature_applies_before_top_p():
    # T = 1: probs ~ [0.53, 0.32, 0.15]: top_p=0.6 keeps 2 tokens; T = 0.25 sharpens token 0 to 0.88: it alone
    logits = torch.log(torch.tensor([0.53, 0.32, 0.15]))
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits.expand(2000, -1), temperature=1.0, top_p=0.6, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits.expand(2000, -1), temperature=0.25, top_p=0.6, generator=g).tolist()) == {0}


def test_top_k_runs_before_top_p_inside_the_sampler():
    # probs 0.3, 0.25, 0.2, 0.15, 0.1; top_k=2 renormalises to 0.545, 0.455; top_p=0.5 then keeps token 0 alone.
    # (top_p first would keep tokens 0 and 1: 0.3 < 0.5 <= 0.55.)
    logits = torch.log(torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1]))
    g = torch.Generator().manual_seed(0)
    tokens = sample_next(logits.expand(2000, -1), top_k=2, top_p=0.5, generator=g)
    assert set(tokens.tolist()) == {0}
    tokens = sample_next(logits.expand(4000, -1), top_k=3, top_p=0.6, generator=g)  # 0.4, 0.33 | 0.27
    assert set(tokens.tolist()) == {0, 1}


def test_min_p_above_one_keeps_only_the_top_token():
    """min_p > 1 would put the threshold above every probability: the top token still survives (greedy)."""
    from xforget.models.sampling import min_p_filter

    logits = torch.randn(3, 50)
    kept = torch.isfinite(min_p_filter(logits, 2.0))
    assert kept.sum(-1).tolist() == [1, 1, 1] and (kept.float().argmax(-1) == logits.argmax(-1)).all()
