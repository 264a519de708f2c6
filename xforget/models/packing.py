"""Packed documents from end-of-text tokens: the model wrapper that training and evaluation share.

A window of a prepared dataset is a slice of its documents back to back, each ended by the
end-of-text token. :func:`eot_documents` gives every position the number of end-of-text tokens
before it in the window: **the separator belongs to the document it ends**, and the token after
it starts a new document. The ids depend on the window's tokens alone, so the data order stays a
pure function of ``(seed, step)``, and the inputs of a window (its first L tokens) give the same
ids as the whole window. :class:`PackedDocuments` computes them on every call and passes them
to the model as ``document_ids`` (DESIGN.md section 7), so the training loss, ``val_bpb`` and
``xforget-eval`` use one rule (``data.pack_documents=true``).
"""

from __future__ import annotations

import operator
from typing import Any

from torch import Tensor, nn


def eot_documents(tokens: Tensor, eot_id: int) -> Tensor:
    """Document ids (same shape, int64) of token ids ``(..., n)``: end-of-text tokens before each position."""
    is_eot = (tokens == eot_id).long()
    return is_eot.cumsum(-1) - is_eot


class PackedDocuments(nn.Module):
    """``net`` (a :class:`~xforget.models.wrapper.TransformerWrapper`) reading packed documents.

    ``forward(x, **kwargs)`` = ``net(x, document_ids=eot_documents(x, eot_id), **kwargs)``. With a
    KV cache the ids count on from the cached ones, and a cache whose last token was the end-of-text
    token starts a new document (``Cache.ends_document``), so cached decoding equals the full window
    step by step, across end-of-text tokens too. Raises ``ValueError`` for an ``eot_id`` outside the
    vocabulary, for ``document_ids`` passed in, and for a non-empty cache the bare model made (it lacks
    that flag). The attributes the scorers read (``attn_layers``, ``position_limit``, ``to_logits``)
    are the net's. Holds no parameters of its own: saving ``net`` saves everything.
    """

    def __init__(self, net: nn.Module, eot_id: int) -> None:
        super().__init__()
        num_tokens = getattr(net, "num_tokens", None)
        try:
            eot = None if isinstance(eot_id, bool) else operator.index(eot_id)  # ints, numpy and torch integers
        except TypeError:
            eot = None
        if eot is None or eot < 0 or (num_tokens is not None and eot >= num_tokens):
            valid = ("an integer >= 0" if num_tokens is None
                     else f"an integer in 0..{num_tokens - 1} (the model's vocabulary)")
            raise ValueError(f"eot_id must be the end-of-text token's id, {valid}; got {eot_id!r}")
        self.net, self.eot_id = net, eot

    @property
    def attn_layers(self) -> nn.Module:
        return self.net.attn_layers

    @property
    def position_limit(self) -> int | None:
        return self.net.position_limit

    @property
    def to_logits(self) -> nn.Module:  # AutoregressiveWrapper(..., return_outputs=True): the output layer
        return self.net.to_logits

    def forward(self, x: Tensor, **kwargs: Any):
        if "document_ids" in kwargs:
            raise ValueError("PackedDocuments derives document_ids from the end-of-text tokens itself; pass ids to "
                             "the bare model (or AutoregressiveWrapper(model)(tokens, document_ids=...)) instead")
        cache = kwargs.get("cache")
        ids = eot_documents(x, self.eot_id)
        if cache is not None and cache.length:
            # cached decoding continues the cached documents: the new tokens' ids count on from the
            # last cached one, and a cached row that ended with the end-of-text token starts a new
            # document with its first new token (as in the full window's ids)
            if cache.documents is None or cache.ends_document is None:
                raise ValueError("PackedDocuments continues only a cache it made (its document ids and whether "
                                 "the last cached token was the end-of-text token); this cache was made by "
                                 "the bare model: decode through the same wrapper from the first call")
            ids = ids + (cache.documents[:, -1:] + cache.ends_document[:, None].long())
        out = self.net(x, document_ids=ids, **kwargs)
        if kwargs.get("return_cache"):
            logits, new_cache = out
            new_cache.ends_document = x[:, -1] == self.eot_id
        return out


def packed(net: nn.Module, eot_id: int | None) -> nn.Module:
    """``net`` itself when ``eot_id`` is None (no packing), else :class:`PackedDocuments` around it."""
    return net if eot_id is None else PackedDocuments(net, eot_id)
