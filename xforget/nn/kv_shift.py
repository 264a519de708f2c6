"""Data-dependent key/value shift (the "KV-shift" of the FoX Pro block).

Lin, Nikishin, He, Courville, "Forgetting Transformer", ICLR 2025 (arXiv
2503.02130), section 4.2 / appendix: each key and value is mixed with the
previous token's (un-shifted) key and value,

    k_t = a_t * k~_{t-1} + (1 - a_t) * k~_t,     v_t = a_t * v~_{t-1} + (1 - a_t) * v~_t,
    a_t = sigmoid(w_h . x_t + b_h)                 (one scalar per KV head and token)

from the attention layer's normed input x_t; k~_{-1} = v~_{-1} = 0. "Previous"
means the previous *real* token: pads are skipped, so a padded batch equals its
unbatched rows. With packed documents the previous token must belong to the same
document: a document's first token shifts in zeros, as it would alone -- or, when the
model has memory tokens (document id :data:`~xforget.ops.documents.MEMORY_DOCUMENT`), the
last memory token's k~, v~, since alone the memory stands right in front of the document.
For exact cached decoding the last real token's k~, v~ are carried in the cache
(:class:`ShiftState`), and the last memory token's as well (a new document may start later).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xforget.ops.documents import memory_keys


@dataclass
class ShiftState:
    """The un-shifted key and value of the last real token, (batch, kv_heads, 1, dim_head) each;
    ``memory_k``, ``memory_v`` the same of the last memory token (packed documents with memory
    tokens: what a new document's first token shifts in), or None."""

    k: Tensor
    v: Tensor
    memory_k: Tensor | None = None
    memory_v: Tensor | None = None


def previous_real(t: Tensor, mask: Tensor | None, state: Tensor | None,
                  documents: Tensor | None = None, first: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """For each new token, the entry of the previous real token (of the same document).

    Args:
        t: (batch, heads, n, d) entries of the new tokens.
        mask: (batch, n) bool, True = real, or None (all real).
        state: (batch, heads, 1, d) entry of the last real token before them, or None (zeros).
        documents: (batch, n + 1) int64 document ids of the state's token and the new tokens
            (packed documents), or None: a previous token of another document gives zeros ...
        first: ... or this (batch, heads, 1, d) entry when given (the last memory token's).
    Returns:
        (previous (batch, heads, n, d), the last real entry after them (batch, heads, 1, d)).
    """
    b, h, n, d = t.shape
    if state is None:
        state = t.new_zeros(b, h, 1, d)
    seq = torch.cat((state.to(t.dtype), t), dim=2)  # index 0 = the carried state, always "real"
    if mask is None:  # every token is real: the previous one is the one before it
        prev = seq[:, :, :n]
        if documents is not None:
            prev = _other_document(prev, documents[:, :-1] == documents[:, 1:], first)
        return prev, seq[:, :, n:]
    real = torch.ones(b, n + 1, dtype=torch.bool, device=t.device) if mask is None else \
        torch.cat((torch.ones_like(mask[:, :1]), mask), dim=1)  # (b, n + 1)
    idx = torch.arange(n + 1, device=t.device).expand(b, n + 1)
    last_real = torch.where(real, idx, 0).cummax(dim=1).values  # (b, n + 1): last real index so far
    gather = last_real[:, None, :, None].expand(b, h, n + 1, d)
    picked = seq.gather(2, gather)
    prev, last = picked[:, :, :n], picked[:, :, n:]
    if documents is not None:  # the previous real token of token i is last_real[i - 1]: same document?
        same = documents.gather(1, last_real[:, :n]) == documents[:, 1:]
        prev = _other_document(prev, same, first)
    return prev, last


def _other_document(prev: Tensor, same: Tensor, first: Tensor | None) -> Tensor:
    """``prev`` where ``same`` (b, n) holds, else zeros (``first`` None) or ``first`` (b, h, 1, d)."""
    if first is None:
        return prev * same[:, None, :, None].to(prev.dtype)
    return torch.where(same[:, None, :, None], prev, first.to(prev.dtype))


def last_memory(t: Tensor, documents: Tensor, carried: Tensor | None) -> Tensor:
    """(b, h, 1, d): the entry of the last memory token among the new tokens ``t`` (b, h, n, d), or
    ``carried`` (from the cache; zeros if None) when this call holds no memory token.

    ``documents`` (b, n + 1) as in :func:`previous_real`; memory tokens are the row's first tokens.
    """
    count = memory_keys(documents[:, 1:]).sum(-1)  # (b,): memory tokens among the new ones
    idx = (count - 1).clamp_min(0)[:, None, None, None].expand(t.shape[0], t.shape[1], 1, t.shape[3])
    here = t.gather(2, idx)
    before = torch.zeros_like(here) if carried is None else carried.to(t.dtype)
    return torch.where((count > 0)[:, None, None, None], here, before)


class KVShift(nn.Module):
    """The FoX Pro KV-shift.

    Args:
        dim: model width (input of the mix).
        kv_heads: number of key/value heads (one mix a_t per KV head).
    Forward: ``(k, v, x, mask, state, documents=None, memory=False) -> (k, v, new_state)`` with k, v
    (batch, kv_heads, n, dim_head) un-shifted, x (batch, n, dim), mask (batch, n) bool
    or None, state a :class:`ShiftState` or None, documents as in :func:`previous_real`;
    ``memory``: the row has memory tokens (a document's first token shifts in the last one's k~, v~).
    """

    def __init__(self, dim: int, kv_heads: int) -> None:
        super().__init__()
        self.to_mix = nn.Linear(dim, kv_heads)
        nn.init.zeros_(self.to_mix.weight)
        nn.init.constant_(self.to_mix.bias, -2.0)  # start close to no shift (a ~ 0.12)

    def forward(
        self, k: Tensor, v: Tensor, x: Tensor, mask: Tensor | None, state: ShiftState | None,
        documents: Tensor | None = None, memory: bool = False,
    ) -> tuple[Tensor, Tensor, ShiftState]:
        a = torch.sigmoid(self.to_mix(x)).transpose(1, 2)[..., None].to(k.dtype)  # (b, kv_heads, n, 1)
        mem_k = mem_v = None
        if memory and documents is not None:
            mem_k = last_memory(k, documents, None if state is None else state.memory_k)
            mem_v = last_memory(v, documents, None if state is None else state.memory_v)
        prev_k, last_k = previous_real(k, mask, None if state is None else state.k, documents, mem_k)
        prev_v, last_v = previous_real(v, mask, None if state is None else state.v, documents, mem_v)
        return k.lerp(prev_k, a), v.lerp(prev_v, a), ShiftState(last_k, last_v, mem_k, mem_v)
