"""The validation score, defined once: next-token loss of a causal model on fixed windows.

The training loop's ``val_loss`` / ``val_bpb`` and ``xforget-eval``'s ``loss`` /
``bpb`` are both computed by :func:`batch_losses`, so a run's logged score and
its evaluation agree (same forward pass, same fp32 cross-entropy, eval mode, no
autocast whatever the training precision).

* A *window* is ``L + 1`` token ids; the model reads the first ``L`` and is
  scored on predicting the last ``L`` (cross-entropy, nats per token).
* ``bpb`` (bits per byte of the original text) is ``loss x tokens_per_byte / ln 2``,
  ``tokens_per_byte`` being the split's tokens / bytes (1 for byte-level data).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN2 = math.log(2.0)


def nats_to_bpb(loss_nats: float, tokens_per_byte: float = 1.0) -> float:
    """Bits per byte of the original text for a loss in nats per token (``tokens_per_byte`` = 1 for bytes)."""
    return loss_nats * tokens_per_byte / LN2


def perplexity(loss_nats: float) -> float:
    """``exp(loss)`` per token; capped at ``exp(700)`` so a diverged loss stays a float."""
    return math.exp(min(loss_nats, 700.0))


def batch_losses(net: nn.Module, windows: Tensor, *, batch_size: int, device: torch.device | str | None = None,
                 with_argmax: bool = False) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Score ``windows`` (count, L + 1) int64, ``batch_size`` windows at a time.

    Yields per batch the next-token losses (b, L) float32 in nats on ``device``
    and, with ``with_argmax``, the predicted ids (b, L) int64 (else None).
    ``net`` maps (b, L) ids to (b, L, vocab) logits (a :class:`~xforget.TransformerWrapper`);
    it is in eval mode while the batches are scored and gets its mode back afterwards.
    ``device`` defaults to that of ``net``'s first parameter.

    Raises:
        ValueError: at once, ``windows`` not 2-D with L >= 1; while iterating, from the model,
            e.g. a length beyond an absolute position table.
    """
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (count, L + 1) with L >= 1, got {tuple(windows.shape)}")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    return _scored(net, windows, batch_size, device, with_argmax)


@torch.no_grad()
def _scored(net: nn.Module, windows: Tensor, batch_size: int, device: torch.device,
            with_argmax: bool) -> Iterator[tuple[Tensor, Tensor | None]]:
    was_training = net.training
    net.eval()
    try:
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            logits = net(batch[:, :-1]).float()
            loss = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
            yield loss, (logits.argmax(-1) if with_argmax else None)
    finally:
        net.train(was_training)


def loss_sums(net: nn.Module, windows: Tensor, *, batch_size: int,
              device: torch.device | str | None = None) -> tuple[float, int]:
    """(sum of the next-token losses in nats, number of scored tokens) over ``windows`` (count, L + 1).

    Each batch is summed in fp32 on ``device``, the batches in float64 (Python floats).
    Raises as :func:`batch_losses`.
    """
    total, count = 0.0, 0
    for loss, _ in batch_losses(net, windows, batch_size=batch_size, device=device):
        total += loss.sum().item()
        count += loss.numel()
    return total, count
