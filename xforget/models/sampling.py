"""Sampling filters for generation, all computed in float32.

Each filter returns logits with removed tokens set to -inf and always keeps the
most likely token (so a distribution never becomes empty).

* top-k (Fan et al. 2018): keep the k largest logits; k = 0 or None means off,
  k larger than the vocabulary is clamped.
* top-p / nucleus (Holtzman et al. 2020, arXiv 1904.09751): keep the smallest
  set whose probability reaches p; p = 1 keeps everything, p <= 0 keeps the top token.
* min-p (Nguyen et al. 2024, arXiv 2407.01082): keep tokens with
  prob >= min_p * max prob.

Order (as in Hugging Face ``generate`` and vLLM): temperature first, then the
filters on the tempered distribution: top-k, top-p (over the top-k survivors,
renormalised), min-p (over the top-p survivors). Temperature therefore changes
which tokens top-p and min-p keep: at T < 1 the distribution is sharper and the
nucleus smaller.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """logits (..., vocab) -> float32 logits with all but the k largest at -inf."""
    logits = logits.float()
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filter on logits (..., vocab), float32 out."""
    logits = logits.float()
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly more likely tokens
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False  # the most likely token always survives
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float | None) -> Tensor:
    """Keep tokens whose probability is at least min_p times the top probability."""
    logits = logits.float()
    if min_p is None or min_p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min(min_p, 1.0) * probs.amax(dim=-1, keepdim=True)  # min_p > 1 would remove every token
    return logits.masked_fill(probs < threshold, float("-inf"))


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from logits (batch, vocab) of any float dtype.

    The logits are divided by ``temperature`` first (Hugging Face / vLLM order),
    then filtered in the order top_k, top_p (renormalised over the survivors),
    min_p, all in float32; the token is drawn from the softmax of what is kept.
    Temperature 0 is greedy (argmax).

    Returns:
        (batch,) int64 token ids.
    Raises:
        ValueError: negative temperature.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    logits = top_k_filter(logits, top_k)
    logits = top_p_filter(logits, top_p)
    logits = min_p_filter(logits, min_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
