"""``AutoregressiveWrapper``: next-token loss for training and sampling for generation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xforget.models.sampling import sample_next
from xforget.models.wrapper import TransformerWrapper


class AutoregressiveWrapper(nn.Module):
    """Wraps a causal :class:`TransformerWrapper`.

    ``wrapper(tokens)`` returns the mean next-token cross-entropy in nats;
    ``wrapper.generate(prompts, seq_len)`` samples continuations.
    """

    def __init__(self, net: TransformerWrapper, ignore_index: int = -100) -> None:
        super().__init__()
        if not net.attn_layers.causal:
            raise ValueError("AutoregressiveWrapper needs a causal net (Decoder), got an Encoder")
        self.net, self.ignore_index = net, ignore_index

    def forward(self, tokens: Tensor, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """tokens (batch, n+1) int64 -> mean cross-entropy (nats) of predicting tokens[:, 1:].

        mask (batch, n+1) bool marks real tokens; targets at pads are ignored.
        reduction="none" returns the per-position loss (batch, n).
        """
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = self.net(inputs, mask=None if mask is None else mask[:, :-1])
        if mask is not None:
            targets = targets.masked_fill(~mask[:, 1:], self.ignore_index)
        loss = F.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=self.ignore_index, reduction=reduction
        )
        return loss

    @torch.no_grad()
    def generate(
        self,
        prompts: Tensor | list[Tensor],
        seq_len: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        eos_token: int | None = None,
        cache_kv: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample ``seq_len`` new tokens after each prompt.

        Args:
            prompts: (batch, n) int64, or a list of 1-D int64 tensors of different
                lengths (left-padded internally; each row equals its own unbatched run).
            seq_len: number of new tokens.
            temperature: 0 = greedy; top_k / top_p / min_p: filters applied, in
                that order, to the logits already divided by the temperature (the
                Hugging Face / vLLM order; see :mod:`xforget.models.sampling`; top_k 0 =
                off, clamped to the vocabulary);
                eos_token: rows stop there and are padded with eos afterwards.
            cache_kv: decode with the KV cache (exact; much faster).
            generator: torch.Generator for reproducible sampling.
        Returns:
            (batch, seq_len) int64 new tokens.
        Relative schemes (none, rotary, alibi, fox, ...) generate past
        ``max_seq_len`` with the cache. A model with an absolute position table
        switches, once the sequence is longer than ``max_seq_len``, to a sliding
        window: each step reruns the last ``max_seq_len`` tokens without the cache.

        Raises:
            ValueError: an empty prompt.
        """
        steps = list(self.stream(prompts, seq_len, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 eos_token=eos_token, cache_kv=cache_kv, generator=generator))
        b = _left_pad(prompts)[0].shape[0]
        out = torch.stack(steps, dim=1) if steps else torch.empty(b, 0, dtype=torch.long)
        if eos_token is not None and out.shape[1] < seq_len:
            out = torch.cat((out, out.new_full((b, seq_len - out.shape[1]), eos_token)), dim=1)
        return out

    @torch.no_grad()
    def stream(
        self,
        prompts: Tensor | list[Tensor],
        seq_len: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        eos_token: int | None = None,
        cache_kv: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[Tensor]:
        """Like :meth:`generate`, but yields each step's (batch,) tokens as they are sampled.

        Stops early once every row has produced ``eos_token``.
        """
        was_training = self.training
        self.eval()
        try:
            tokens, mask = _left_pad(prompts)
            b = tokens.shape[0]
            # an absolute position table ends at max_seq_len: past it, slide a window (no cache)
            window = self.net.position_limit
            done = torch.zeros(b, dtype=torch.bool, device=tokens.device)
            history, cache = tokens, None
            step_tokens, step_mask = tokens, mask
            for _ in range(seq_len):
                sliding = window is not None and history.shape[1] > window
                if cache_kv and not sliding:
                    logits, cache = self.net(step_tokens, mask=step_mask, cache=cache, return_cache=True)
                else:
                    full_mask = None if mask is None else torch.cat(
                        (mask, mask.new_ones(b, history.shape[1] - mask.shape[1])), dim=1)
                    start = history.shape[1] - window if sliding else 0
                    logits = self.net(history[:, start:], mask=None if full_mask is None else full_mask[:, start:])
                nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  generator=generator)
                if eos_token is not None:
                    nxt = nxt.masked_fill(done, eos_token)
                    done |= nxt == eos_token
                yield nxt
                history = torch.cat((history, nxt[:, None]), dim=1)
                step_tokens = nxt[:, None]
                step_mask = None if mask is None else mask.new_ones(b, 1)
                if eos_token is not None and bool(done.all()):
                    return
        finally:
            self.train(was_training)


def _left_pad(prompts: Tensor | list[Tensor]) -> tuple[Tensor, Tensor | None]:
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
