"""Loss, bits per byte and per-position loss of a causal byte-level model on fixed windows.

Everything here is a plain function of (model, windows): no data loading, no
config. The score itself is :mod:`xforget.train.scoring` (shared with the training
loop's validation); the numbers are defined once:

* A *window* is ``L + 1`` token ids; the model reads the first ``L`` and is
  scored on predicting the last ``L`` (next-token cross-entropy, nats).
* ``per_position[i]`` is the mean loss at target index ``i`` (predicting token
  ``i + 1`` after reading tokens ``0..i``) over all windows.
* ``loss`` is the mean over every scored token. As every window has the same
  length, ``loss == mean(per_position)`` exactly (up to float summation order;
  tests/test_evaluate.py pins this down).
* ``bpb`` (bits per byte of the original text) is ``loss x tokens_per_byte / ln 2``,
  ``tokens_per_byte`` being the validation split's tokens / bytes (1 for byte-level
  data; from ``meta.json`` for a prepared dataset). ``ppl`` is ``exp(loss)`` (per token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from xforget.train.scoring import LN2, batch_losses, nats_to_bpb, perplexity  # noqa: F401  (LN2, nats_to_bpb: public here too)


@dataclass
class WindowEval:
    """Result of :func:`evaluate_windows` on ``windows`` of ``length`` scored tokens."""

    length: int
    windows: int
    loss: float  # mean nats per scored token
    bpb: float
    per_position: list[float] = field(default_factory=list)  # mean loss at each target index (length entries)
    ppl: float = math.nan  # exp(loss), per token
    buckets: list[dict] = field(default_factory=list)  # position_buckets: mean and standard error per bucket
    octaves: list[dict] = field(default_factory=list)  # the same over doubling buckets (1, 2, 3-4, 5-8, ...)

    @property
    def tokens(self) -> int:
        return self.length * self.windows


def _batch_size_for(length: int, batch_tokens: int) -> int:
    return max(1, batch_tokens // max(1, length))


def token_losses(net: nn.Module, windows: Tensor, *, batch_tokens: int = 16384,
                 device: torch.device | str | None = None, with_argmax: bool = False) -> tuple[Tensor, Tensor | None]:
    """Per-token next-token loss (windows, L) float64 in nats, and optionally the argmax predictions (windows, L).

    ``net`` maps (b, L) ids to (b, L, vocab) logits (a :class:`~xforget.TransformerWrapper`).
    Batches hold about ``batch_tokens`` tokens; each is scored by
    :func:`xforget.train.scoring.batch_losses` (the training loop's validation score)
    and moved to the CPU. The model is put in eval mode for the call and restored afterwards.

    Raises:
        ValueError: ``windows`` not (count, L + 1) with L >= 1; from the model, e.g. a length
            beyond an absolute position table.
    """
    bs = _batch_size_for(windows.shape[-1] - 1 if windows.ndim else 0, batch_tokens)  # a 0-d tensor: batch_losses says why
    losses, preds = [], []
    for loss, pred in batch_losses(net, windows, batch_size=bs, device=device, with_argmax=with_argmax):
        losses.append(loss.double().cpu())
        if with_argmax:
            preds.append(pred.cpu())
    return torch.cat(losses), (torch.cat(preds) if with_argmax else None)


def evaluate_windows(net: nn.Module, windows: Tensor, *, batch_tokens: int = 16384,
                     device: torch.device | str | None = None, tokens_per_byte: float = 1.0,
                     buckets_per_octave: int = 0) -> WindowEval:
    """Mean loss, bpb, perplexity and the per-position loss curve of ``net`` on ``windows`` (count, L + 1).

    ``buckets_per_octave > 0`` adds :func:`bucket_stats` over :func:`position_buckets` (that many per
    octave, and one per octave).
    """
    losses, _ = token_losses(net, windows, batch_tokens=batch_tokens, device=device)
    per_position = losses.mean(dim=0)
    loss = float(losses.mean())
    length = windows.shape[1] - 1
    buckets = bucket_stats(losses, position_buckets(length, buckets_per_octave)) if buckets_per_octave > 0 else []
    octaves = bucket_stats(losses, position_buckets(length, 1)) if buckets_per_octave > 0 else []
    return WindowEval(length=length, windows=windows.shape[0], loss=loss,
                      bpb=nats_to_bpb(loss, tokens_per_byte), per_position=[float(v) for v in per_position],
                      ppl=perplexity(loss), buckets=buckets, octaves=octaves)


def position_buckets(length: int, per_octave: int = 4) -> list[tuple[int, int]]:
    """Log-spaced position buckets ``[(lo, hi), ...]``, 1-based inclusive, covering positions 1..length.

    Position ``p`` is the loss of predicting token ``p`` after reading ``p``
    tokens (target index ``p - 1``). Edges are ``floor(2 ** (k / per_octave))``
    (duplicates dropped), so every power of two ``2**j`` ends a bucket and the
    prefix ``1..2**j`` is a union of whole buckets.

    Raises:
        ValueError: length < 1 or per_octave < 1.
    """
    if length < 1 or per_octave < 1:
        raise ValueError(f"position_buckets needs length >= 1 and per_octave >= 1, got {length}, {per_octave}")
    edges, k = [0], 0
    while edges[-1] < length:
        e = min(length, int(math.floor(2 ** (k / per_octave) + 1e-9)))
        if e > edges[-1]:
            edges.append(e)
        k += 1
    return [(lo + 1, hi) for lo, hi in zip(edges[:-1], edges[1:])]


def bucket_stats(losses: Tensor, buckets: list[tuple[int, int]]) -> list[dict]:
    """Mean loss and its standard error per position bucket, over windows.

    ``losses``: (windows, L) per-token losses (nats). Each window's mean over
    the bucket is one observation (tokens of one window are correlated, windows
    are nearly independent); ``mean`` is their mean (= the mean over every token
    of the bucket), ``se`` their sample standard deviation / sqrt(windows)
    (None for one window). Returns ``[{lo, hi, mean, se, windows}, ...]``.
    """
    out = []
    w = losses.shape[0]
    for lo, hi in buckets:
        per_window = losses[:, lo - 1:hi].double().mean(dim=1)
        se = float(per_window.std(unbiased=True) / math.sqrt(w)) if w > 1 else None
        out.append({"lo": lo, "hi": hi, "mean": float(per_window.mean()), "se": se, "windows": w})
    return out


def length_limit(net: nn.Module) -> int | None:
    """Longest input the model accepts, or None if unlimited (relative schemes).

    See :attr:`xforget.TransformerWrapper.position_limit` (``max_seq_len`` with an
    absolute position table).
    """
    limit = getattr(net, "position_limit", None)
    return None if limit is None else int(limit)


def bin_curve(values: list[float] | Tensor, bins: int = 64, *, log: bool = True) -> tuple[list[float], list[float]]:
    """Average a per-position curve into ``bins`` (log-spaced by default) for plotting.

    Returns (x, y): x the mean 1-based position of each non-empty bin, y its mean value.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    n = v.numel()
    if n == 0:
        return [], []
    pos = torch.arange(1, n + 1, dtype=torch.float64)
    if log:
        edges = torch.unique(torch.logspace(0, math.log10(n + 1), bins + 1).floor().long())
    else:
        edges = torch.unique(torch.linspace(1, n + 1, bins + 1).floor().long())
    xs, ys = [], []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        sel = slice(lo - 1, min(hi - 1, n))
        if sel.stop > sel.start:
            xs.append(float(pos[sel].mean()))
            ys.append(float(v[sel].mean()))
    if edges[-1] - 1 < n:  # tail not covered by rounding
        xs.append(float(pos[edges[-1] - 1:].mean()))
        ys.append(float(v[edges[-1] - 1:].mean()))
    return xs, ys
