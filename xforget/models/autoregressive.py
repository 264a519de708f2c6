"""``AutoregressiveWrapper``: next-token loss for training and sampling for generation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xforget.models.sampling import (
    SamplingOptions,
    eval_mode,
    sample_steps,
    stack_steps,
    takes_sampling_options,
)
from xforget.models.wrapper import TransformerWrapper


class Intermediates(NamedTuple):
    """The second part of ``forward(..., return_outputs=True)``'s outputs (x-transformers' ``LayerIntermediates``
    has this field among many; the others have no counterpart here)."""

    last_hidden: Tensor  # (batch, n, dim) float: the final hidden states, after the final norm, before the logits


class AutoregressiveWrapper(nn.Module):
    """Wraps a causal :class:`TransformerWrapper`.

    ``wrapper(tokens)`` returns the mean next-token cross-entropy in nats;
    ``wrapper.generate(prompts, seq_len)`` samples continuations.

    Args:
        net: the causal model.
        ignore_index: targets with this value are not scored.
        pad_value: x-transformers' name. None (default): rows that ended with ``eos_token`` are padded with
            it. An id: they are padded with ``pad_value`` instead (the eos itself kept), and input tokens equal
            to ``ignore_index`` are fed as ``pad_value`` (their targets are still ignored), as x-transformers
            does.
    """

    def __init__(self, net: TransformerWrapper, ignore_index: int = -100, pad_value: int | None = None) -> None:
        super().__init__()
        if not net.attn_layers.causal:
            raise ValueError("AutoregressiveWrapper needs a causal net (Decoder), got an Encoder")
        if pad_value is not None and not 0 <= pad_value < net.num_tokens:
            raise ValueError(f"pad_value={pad_value} is not a token id: valid 0..{net.num_tokens - 1} (or None: pad "
                             "with eos_token)")
        self.net, self.ignore_index, self.pad_value = net, ignore_index, pad_value

    def forward(self, tokens: Tensor, mask: Tensor | None = None, reduction: str = "mean",
                return_outputs: bool = False, document_ids: Tensor | None = None
                ) -> Tensor | tuple[Tensor, tuple[Tensor, Intermediates]]:
        """tokens (batch, n+1) int64 -> mean cross-entropy (nats) of predicting tokens[:, 1:].

        mask (batch, n+1) bool marks real tokens; targets at pads are ignored.
        document_ids (batch, n+1) int64, non-decreasing per row: packed documents (the inputs' ids,
        ``document_ids[:, :-1]``, go to the net; see :class:`~xforget.models.wrapper.TransformerWrapper`);
        :class:`~xforget.models.packing.PackedDocuments` derives them from end-of-text tokens instead.
        Raises ``ValueError`` for ids not shaped like ``tokens``.
        reduction="none" returns the per-position loss (batch, n).
        return_outputs: x-transformers' flag: return ``(loss, (logits, Intermediates(last_hidden)))``, the
        logits (batch, n, logits_dim) float of the inputs tokens[:, :-1] and their final hidden states (batch,
        n, dim), from the same forward pass as the loss (x-transformers' ``last_hidden`` also holds the last
        token's position, n + 1 in all: it runs every token; the first n are these).
        """
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        if self.pad_value is not None:
            inputs = inputs.masked_fill(inputs == self.ignore_index, self.pad_value)
        input_mask = None if mask is None else mask[:, :-1]
        docs = {}
        if document_ids is not None:
            if not isinstance(document_ids, Tensor):
                raise ValueError(f"document_ids must be a torch integer tensor shaped like tokens; got a "
                                 f"{type(document_ids).__module__}.{type(document_ids).__name__} (e.g. torch.as_tensor(ids))")
            if tuple(document_ids.shape) != tuple(tokens.shape):
                raise ValueError(f"document_ids must be shaped like tokens (batch, n+1) = {tuple(tokens.shape)}; "
                                 f"got {tuple(document_ids.shape)}")
            docs = {"document_ids": document_ids[:, :-1]}
        if return_outputs:  # the hidden states, then the output layer: one pass gives both
            hidden = self.net(inputs, mask=input_mask, return_embeddings=True, **docs)
            logits = self.net.to_logits(hidden)
        else:  # one call of the net: what DDP / FSDP / torch.compile wrap in training
            logits = self.net(inputs, mask=input_mask, **docs)
        if mask is not None:
            targets = targets.masked_fill(~mask[:, 1:], self.ignore_index)
        loss = F.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=self.ignore_index, reduction=reduction
        )
        return (loss, (logits, Intermediates(last_hidden=hidden))) if return_outputs else loss

    @takes_sampling_options
    @torch.no_grad()
    def generate(self, prompts: Tensor | list[Tensor], seq_len: int, *,
                 sampling: SamplingOptions = SamplingOptions()) -> Tensor:
        """Sample ``seq_len`` new tokens after each prompt.

        Args:
            prompts: (batch, n) int64, or a list of 1-D int64 tensors of different
                lengths (left-padded internally; each row equals its own unbatched run).
            seq_len: number of new tokens.
            sampling: the options, also accepted one by one as keywords (``temperature=0.8, top_k=50``):
                temperature (0 = greedy), the top_k / top_p / min_p filters, eos_token, cache_kv,
                generator; see :class:`xforget.models.sampling.SamplingOptions`.
                x-transformers' ``filter_logits_fn`` / ``filter_kwargs`` are accepted too
                (:func:`~xforget.models.sampling.x_transformers_filter`).
        Returns:
            (batch, seq_len) int64 new tokens (rows that ended with ``eos_token`` padded with it, or with
            ``pad_value`` when the wrapper has one).
        Relative schemes (none, rotary, alibi, fox, ...) generate past
        ``max_seq_len`` with the cache. A model with an absolute position table
        switches, once the sequence is longer than ``max_seq_len``, to a sliding
        window: each step reruns the last ``max_seq_len`` tokens without the cache.

        Raises:
            ValueError: an empty prompt, a negative temperature.
        """
        tokens, _ = _left_pad(prompts)
        out = stack_steps(self.stream(prompts, seq_len, sampling=sampling), tokens.shape[0], seq_len,
                          sampling.eos_token, tokens.device)
        if self.pad_value is not None and sampling.eos_token is not None:  # after each row's first eos
            after = (out == sampling.eos_token).long().cumsum(dim=1) - (out == sampling.eos_token).long() > 0
            out = out.masked_fill(after, self.pad_value)
        return out

    @takes_sampling_options
    @torch.no_grad()
    def stream(self, prompts: Tensor | list[Tensor], seq_len: int, *,
               sampling: SamplingOptions = SamplingOptions()) -> Iterator[Tensor]:
        """Like :meth:`generate`, but yields each step's (batch,) tokens as they are sampled.

        Stops early once every row has produced ``eos_token``.
        """
        with eval_mode(self):
            tokens, mask = _left_pad(prompts)
            yield from sample_steps(_CausalSteps(self.net, tokens, mask, sampling.cache_kv), tokens.shape[0], seq_len,
                                    sampling, tokens.device)


class _CausalSteps:
    """Next-token logits of a causal :class:`TransformerWrapper`, one step at a time (for :func:`sample_steps`).

    With ``cache_kv`` each step feeds only the new tokens through the KV cache. A model with an
    absolute position table has no position past ``max_seq_len``: once the sequence is longer,
    each step reruns the last ``max_seq_len`` tokens without the cache (a sliding window).
    """

    def __init__(self, net: TransformerWrapper, tokens: Tensor, mask: Tensor | None, cache_kv: bool) -> None:
        self.net, self.mask, self.cache_kv = net, mask, cache_kv
        self.window = net.position_limit
        self.history, self.cache = tokens, None

    def __call__(self, new: Tensor | None) -> Tensor:
        """(batch, vocab) logits after the prompt (``new`` None) or after the tokens ``new`` (batch,)."""
        mask, b = self.mask, self.history.shape[0]
        if new is not None:
            self.history = torch.cat((self.history, new[:, None]), dim=1)
        sliding = self.window is not None and self.history.shape[1] > self.window
        if self.cache_kv and not sliding:
            if new is None:
                step_tokens, step_mask = self.history, mask
            else:
                step_tokens, step_mask = new[:, None], None if mask is None else mask.new_ones(b, 1)
            logits, self.cache = self.net(step_tokens, mask=step_mask, cache=self.cache, return_cache=True)
            return logits[:, -1]
        full_mask = None if mask is None else torch.cat((mask, mask.new_ones(b, self.history.shape[1] - mask.shape[1])),
                                                        dim=1)
        start = self.history.shape[1] - self.window if sliding else 0
        return self.net(self.history[:, start:], mask=None if full_mask is None else full_mask[:, start:])[:, -1]


def _left_pad(prompts: Tensor | list[Tensor]) -> tuple[Tensor, Tensor | None]:
    items = prompts if isinstance(prompts, (list, tuple)) else [prompts]
    odd = next((p for p in items if not isinstance(p, Tensor)), None)
    if odd is not None:
        raise ValueError(f"prompts must be a torch int64 tensor (batch, n) or a list of 1-D ones; got a "
                         f"{type(odd).__module__}.{type(odd).__name__} (e.g. torch.as_tensor(prompt))")
    if isinstance(prompts, Tensor):
        if prompts.ndim == 1:
            prompts = prompts[None]
        if prompts.shape[1] == 0:
            raise ValueError("prompts must hold at least one token")
        return prompts.long(), None
    if not prompts or any(p.numel() == 0 for p in prompts):
        raise ValueError("every prompt must hold at least one token")
    width = max(p.numel() for p in prompts)
    tokens = torch.zeros(len(prompts), width, dtype=torch.long, device=prompts[0].device)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool, device=prompts[0].device)
    for row, p in enumerate(prompts):
        tokens[row, width - p.numel():] = p.long()
        mask[row, width - p.numel():] = True
    return tokens, (None if bool(mask.all()) else mask)
