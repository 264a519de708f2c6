"""How generation chooses each next token: the options (:class:`SamplingOptions`), the filters
(computed in float32) and the decoding loop every generating model shares.

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

``AutoregressiveWrapper.generate`` / ``.stream`` and ``XTransformer.generate`` take the
options either as keywords (``temperature=0.7, top_k=50, ...``; one per
:class:`SamplingOptions` field, see :func:`takes_sampling_options`) or as one object
(``sampling=SamplingOptions(...)``), and decode with :func:`sample_steps`.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SamplingOptions:
    """How tokens are generated.

    Attributes:
        temperature: logits are divided by it first; 0 = greedy (argmax). Must be >= 0.
        top_k / top_p / min_p: the filters applied, in that order, to the tempered logits
            (None = off; top_k 0 = off, clamped to the vocabulary; see the module docstring).
        eos_token: rows stop there and are padded with it afterwards; generation ends once
            every row has produced it.
        cache_kv: decode with the KV cache (exact: equal to recomputing the whole sequence each step;
            much faster).
        generator: torch.Generator for reproducible sampling.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    eos_token: int | None = None
    cache_kv: bool = True
    generator: torch.Generator | None = None


_OPTION_NAMES = tuple(f.name for f in fields(SamplingOptions))


def takes_sampling_options(fn: Callable) -> Callable:
    """Decorator for a generating method ``fn(..., *, sampling: SamplingOptions = SamplingOptions())``.

    The decorated method also takes every :class:`SamplingOptions` field as a keyword argument with the
    field's default (``temperature=0.7, top_k=50``); given keywords replace those fields of ``sampling``.
    Its signature (``help()``, ``inspect.signature``) lists them, so the option list is written once, here.
    x-transformers' ``filter_logits_fn`` / ``filter_kwargs`` are translated into those fields
    (:func:`x_transformers_filter`).
    """
    @functools.wraps(fn)
    def call(*args, **kwargs):
        given = {name: kwargs.pop(name) for name in _OPTION_NAMES if name in kwargs}
        sampling = replace(kwargs.get("sampling") or SamplingOptions(), **given)
        x_filter = kwargs.pop("filter_logits_fn", None), kwargs.pop("filter_kwargs", None)
        if x_filter != (None, None):  # x-transformers' names for the filters
            sampling = x_transformers_filter(sampling, *x_filter, _output_vocab(args[0]))
        kwargs["sampling"] = sampling
        return fn(*args, **kwargs)

    own = inspect.signature(fn)
    keywords = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                for f in fields(SamplingOptions)]
    keywords += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
                 for name in ("filter_logits_fn", "filter_kwargs")]
    call.__signature__ = own.replace(parameters=[*own.parameters.values(), *keywords])
    return call


# x-transformers' generate(filter_logits_fn=NAME or its function, filter_kwargs={...}) -> our option and the
# keyword of theirs that sets it, with their default
_X_FILTERS = {"top_k": ("top_k", "k"), "top_p": ("top_p", "thres"), "min_p": ("min_p", "min_p")}
_X_FILTER_DEFAULTS = {"top_p": 0.9, "min_p": 0.1}


def x_transformers_filter(sampling: SamplingOptions, filter_logits_fn, filter_kwargs: dict | None,
                          num_tokens: int) -> SamplingOptions:
    """``sampling`` with x-transformers' ``filter_logits_fn`` / ``filter_kwargs`` translated into its fields.

    Accepted: ``"top_k"`` (``k``, else ``ceil(frac_num_tokens * num_tokens)`` with their ``frac_num_tokens``
    default 0.1), ``"top_p"`` (``thres``, default 0.9), ``"min_p"`` (``min_p``, default 0.1), as names or as
    x-transformers' own functions of those names; None or their ``identity`` change nothing.
    x-transformers filters *before* dividing by the temperature, xforget after (Hugging Face's order): the
    same for top-k at any temperature and for top-p / min-p at temperature 0 or 1, so other temperatures are
    refused for those rather than silently sampling from another distribution.

    Raises:
        TypeError: another function or name (top_a, a lambda), or an unknown ``filter_kwargs`` key.
        ValueError: top_p / min_p at a temperature other than 0 or 1, or a field already set to another value.
    """
    name = filter_logits_fn if isinstance(filter_logits_fn, str) or filter_logits_fn is None else \
        getattr(filter_logits_fn, "__name__", repr(filter_logits_fn))
    kwargs = dict(filter_kwargs or {})
    if name in (None, "identity"):
        if kwargs:
            raise TypeError(f"filter_kwargs {sorted(kwargs)} given without a filter_logits_fn")
        return sampling
    if name not in _X_FILTERS:
        raise TypeError(f"filter_logits_fn={name!r} is not supported; supported: {sorted(_X_FILTERS)} (x-transformers' "
                        "names or functions), or pass top_k=, top_p=, min_p= directly")
    field, key = _X_FILTERS[name]
    if name == "top_k":
        frac = kwargs.pop("frac_num_tokens", 0.1)
        k = kwargs.pop("k", None)
        value = min(int(k) if k is not None else math.ceil(frac * num_tokens), num_tokens)
    else:
        value = float(kwargs.pop(key, _X_FILTER_DEFAULTS[name]))
        if sampling.temperature not in (0, 1):
            raise ValueError(f"filter_logits_fn={name!r} with temperature={sampling.temperature}: x-transformers "
                             "filters before the temperature, xforget after; pass "
                             f"{field}={value} to sample in xforget's order (Hugging Face's)")
    if kwargs:
        raise TypeError(f"unknown filter_kwargs {sorted(kwargs)} for filter_logits_fn={name!r}")
    if getattr(sampling, field) not in (None, value):
        raise ValueError(f"filter_logits_fn={name!r} sets {field}={value}, which conflicts with {field}="
                         f"{getattr(sampling, field)}; give only one of them")
    return replace(sampling, **{field: value})


def _output_vocab(owner) -> int:
    """Vocabulary of the generating model ``owner`` (an AutoregressiveWrapper's net, an XTransformer's decoder)."""
    net = getattr(owner, "net", None) or getattr(owner, "decoder", None)
    return int(getattr(net, "num_tokens", None) or owner.num_tokens)


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


def sample_steps(next_logits: Callable[[Tensor | None], Tensor], batch: int, seq_len: int,
                 sampling: SamplingOptions, device: torch.device | str) -> Iterator[Tensor]:
    """The decoding loop: yields each step's (batch,) int64 tokens, at most ``seq_len`` steps.

    ``next_logits(new)`` returns the (batch, vocab) logits of the next token, given the tokens sampled
    at the previous step (``new``, (batch,) int64; None at the first step). Rows that produced
    ``sampling.eos_token`` get it again; the loop ends early once every row has.
    """
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    new = None
    for _ in range(seq_len):
        new = sample_next(next_logits(new), temperature=sampling.temperature, top_k=sampling.top_k,
                          top_p=sampling.top_p, min_p=sampling.min_p, generator=sampling.generator)
        if sampling.eos_token is not None:
            new = new.masked_fill(done, sampling.eos_token)
            done |= new == sampling.eos_token
        yield new
        if sampling.eos_token is not None and bool(done.all()):
            return


def stack_steps(steps: Iterable[Tensor], batch: int, seq_len: int, eos_token: int | None,
                device: torch.device | str) -> Tensor:
    """The tokens of :func:`sample_steps` as one (batch, seq_len) int64 tensor (an early end padded with eos)."""
    steps = list(steps)
    out = torch.stack(steps, dim=1) if steps else torch.empty(batch, 0, dtype=torch.long, device=device)
    if eos_token is not None and out.shape[1] < seq_len:
        out = torch.cat((out, out.new_full((batch, seq_len - out.shape[1]), eos_token)), dim=1)
    return out


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block (dropout off), then back to the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
