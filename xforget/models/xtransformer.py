"""``XTransformer``: encoder-decoder (Vaswani et al. 2017) from two TransformerWrappers.

The encoder is a :class:`~xforget.models.layers.Encoder` language model body; the
decoder a :class:`~xforget.models.layers.Decoder` with cross-attention (pattern "acf")
to the encoder's final hidden states. Options are given once with ``enc_`` /
``dec_`` prefixes (as in x-transformers), e.g. ``enc_depth=6, dec_position="fox"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xforget.models.layers import Decoder, Encoder
from xforget.models.sampling import SamplingOptions, eval_mode, sample_steps, stack_steps, takes_sampling_options
from xforget.models.wrapper import TransformerWrapper

_WRAPPER_KEYS = ("num_tokens", "max_seq_len", "tie_embedding")


def _split_prefixed(kwargs: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in kwargs.items() if k.startswith(prefix)}


class XTransformer(nn.Module):
    """Encoder-decoder transformer.

    Args:
        dim: width of both stacks.
        tie_token_emb: share the encoder's token embedding with the decoder
            (needs enc_num_tokens == dec_num_tokens).
        ignore_index: target value ignored by the loss.
        **kwargs: ``enc_*`` / ``dec_*`` options: num_tokens, max_seq_len,
            tie_embedding (wrapper), depth, heads and any layer option.
    Raises:
        TypeError: an option without the enc_/dec_ prefix.
        ValueError: invalid layer options (see :mod:`xforget.models.validate`) or
            tie_token_emb with different vocabularies.
    """

    def __init__(self, *, dim: int, tie_token_emb: bool = False, ignore_index: int = -100, **kwargs) -> None:
        super().__init__()
        stray = sorted(k for k in kwargs if not k.startswith(("enc_", "dec_")))
        if stray:
            raise TypeError(f"XTransformer: options {stray} need an enc_ or dec_ prefix (e.g. enc_depth, dec_heads)")
        enc, dec = _split_prefixed(kwargs, "enc_"), _split_prefixed(kwargs, "dec_")
        enc_wrap = {k: enc.pop(k) for k in _WRAPPER_KEYS if k in enc}
        dec_wrap = {k: dec.pop(k) for k in _WRAPPER_KEYS if k in dec}
        self.encoder = TransformerWrapper(
            attn_layers=Encoder(dim, enc.pop("depth", 6), enc.pop("heads", 8), **enc), **enc_wrap
        )
        self.decoder = TransformerWrapper(
            attn_layers=Decoder(dim, dec.pop("depth", 6), dec.pop("heads", 8), cross_attend=True, **dec), **dec_wrap
        )
        if tie_token_emb:
            if self.encoder.num_tokens != self.decoder.num_tokens:
                raise ValueError("tie_token_emb needs enc_num_tokens == dec_num_tokens")
            self.decoder.token_emb = self.encoder.token_emb
            if dec_wrap.get("tie_embedding"):
                self.decoder.to_logits.weight = self.decoder.token_emb.emb.weight
        self.ignore_index = ignore_index

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src (batch, m) int64 -> encoder hidden states (batch, m, dim)."""
        return self.encoder(src, mask=src_mask, return_embeddings=True)

    def decode(self, tgt: Tensor, context: Tensor, *, context_mask: Tensor | None = None, tgt_mask: Tensor | None = None) -> Tensor:
        """Decoder logits (batch, n, dec_num_tokens) for tgt (batch, n) attending to context (batch, m, dim)."""
        dec = self.decoder
        b, n = tgt.shape
        positions = TransformerWrapper._positions(b, n, tgt_mask, None, tgt.device)
        h = dec.token_emb(tgt)
        if dec.pos_emb is not None:
            h = h + dec.pos_emb(positions)
        h, _ = dec.attn_layers(h, positions=positions, mask=tgt_mask, key_mask=tgt_mask, context=context, context_mask=context_mask)
        return dec.to_logits(h)

    def forward(self, src: Tensor, tgt: Tensor, *, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy (nats) of tgt[:, 1:] given src and tgt[:, :-1].

        src (batch, m), tgt (batch, n + 1) int64; masks (bool, True = real) mark pads
        (target pads are ignored by the loss).
        """
        inputs, targets = tgt[:, :-1], tgt[:, 1:]
        in_mask = None if tgt_mask is None else tgt_mask[:, :-1]
        if tgt_mask is not None:
            targets = targets.masked_fill(~tgt_mask[:, 1:], self.ignore_index)
        logits = self.decode(inputs, self.encode(src, src_mask), context_mask=src_mask, tgt_mask=in_mask)
        return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=self.ignore_index)

    @takes_sampling_options
    @torch.no_grad()
    def generate(self, src: Tensor, start_tokens: Tensor, seq_len: int, *, src_mask: Tensor | None = None,
                 sampling: SamplingOptions = SamplingOptions()) -> Tensor:
        """Sample ``seq_len`` tokens after ``start_tokens`` (batch, k) int64 given ``src`` (batch, m) int64.

        The options (``sampling=`` or its fields as keywords) and the decoding loop are those of
        :meth:`xforget.models.autoregressive.AutoregressiveWrapper.generate`; ``cache_kv`` decodes with
        the decoder's KV cache (exact: equal to recomputing the whole target each step).
        ``src_mask`` (batch, m) bool marks real source tokens.
        Returns (batch, seq_len) int64 (rows that ended with ``eos_token`` padded with it).
        """
        with eval_mode(self):
            context = self.encode(src, src_mask)
            target, cache = start_tokens, None

            def next_logits(new: Tensor | None) -> Tensor:
                nonlocal target, cache
                step = target if new is None else new[:, None]
                if new is not None:
                    target = torch.cat((target, step), dim=1)
                if sampling.cache_kv:
                    logits, cache = self.decoder(step, cache=cache, return_cache=True, context=context,
                                                 context_mask=src_mask)
                    return logits[:, -1]
                return self.decode(target, context, context_mask=src_mask)[:, -1]

            batch = src.shape[0]
            return stack_steps(sample_steps(next_logits, batch, seq_len, sampling, src.device), batch, seq_len,
                               sampling.eos_token, src.device)
