"""``TransformerWrapper``: token embedding -> attention layers -> logits, with a KV cache."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from xforget.models.aliases import translate_x_transformers_kwargs
from xforget.models.config import BYTE_VOCAB, ModelConfig, model_config_from_dict
from xforget.models.layers import AttentionLayers, Decoder, Encoder
from xforget.models.layer_options import config_layer_options
from xforget.models.memory_tokens import (
    extend_mask,
    input_positions,
    memory_parameter,
    memory_to_prepend,
    prepend_memory,
)
from xforget.models.pretrained import (
    build_from_pretrained,
    check_saveable,
    save_tokenizer,
    save_weights,
)
from xforget.models.validate import validate_model_config
from xforget.nn.embeddings import AbsolutePositionalEmbedding, TokenEmbedding
from xforget.nn.kv_cache import Cache
from xforget.ops.documents import MEMORY_DOCUMENT, check_document_ids, memory_keys, segment_starts


class TransformerWrapper(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="xforget",
    tags=["forgetting-transformer", "xforget"],
    paper_url="https://arxiv.org/abs/2503.02130",
):
    """A language model around a :class:`Decoder` or :class:`Encoder`.

    Hugging Face-style directories come from ``huggingface_hub``'s
    ``PyTorchModelHubMixin``: ``save_pretrained(dir, tokenizer=None)`` writes
    ``config.json`` (the :class:`~xforget.models.config.ModelConfig`), ``model.safetensors``,
    a model card and the tokenizer when given; ``TransformerWrapper.from_pretrained(dir_or_repo_id)``
    rebuilds the model; ``push_to_hub(repo_id)`` uploads. Only models built from a
    ``ModelConfig`` (:func:`xforget.build_model`, a run directory, ``from_pretrained``)
    can be saved this way (see :mod:`xforget.models.pretrained`).

    Args:
        num_tokens: vocabulary size.
        max_seq_len: longest sequence for the absolute position table (relative
            schemes are not limited by it).
        attn_layers: the layer stack; its ``position`` decides whether an
            absolute embedding exists (only when ``"absolute"`` is asked for).
        tie_embedding: share the token embedding with the output projection.
        use_abs_pos_emb: x-transformers alias; True adds an absolute embedding
            (only if the layers use no rotary or bias scheme, as there).
        emb_dropout: dropout on the summed embeddings before the first layer (x-transformers' name; 0 = off).
        l2norm_embed: divide token (and absolute position) embeddings by their L2 norm, the tables
            starting at std 1e-5 (x-transformers' ``l2norm_embed``).
        logits_dim: width of the output layer (default ``num_tokens``), e.g. for a classifier head; not
            with ``tie_embedding`` unless equal to ``num_tokens``.
        num_memory_tokens: M learned vectors (x-transformers' ``num_memory_tokens``, parameter
            ``memory_tokens`` (M, dim)) concatenated before the embedded tokens (after the absolute table
            and ``emb_dropout``): every token attends to them, their outputs are dropped; with a KV cache
            they are prepended on the first call only (:mod:`xforget.models.memory_tokens`). With
            ``document_ids`` (packed documents, causal layers only) every document sees them as if they
            stood right in front of it (see :meth:`forward`).
    Raises:
        ValueError: max_seq_len or num_tokens < 1, emb_dropout outside [0, 1), logits_dim < 1 or a tied
            embedding of another width, num_memory_tokens < 0.
        TypeError: an unknown option (x-transformers' ``return_only_embed``, ``cls_token``, ...: see
            the migration table in docs/models.md).
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        max_seq_len: int,
        attn_layers: AttentionLayers,
        tie_embedding: bool = False,
        use_abs_pos_emb: bool | None = None,
        emb_dropout: float = 0.0,
        l2norm_embed: bool = False,
        logits_dim: int | None = None,
        num_memory_tokens: int = 0,
        **kwargs,
    ) -> None:
        super().__init__()
        if num_tokens < 1 or max_seq_len < 1:
            raise ValueError(f"num_tokens and max_seq_len must be >= 1, got {num_tokens}, {max_seq_len}")
        if not 0.0 <= emb_dropout < 1.0:
            raise ValueError(f"emb_dropout must be in [0, 1), got {emb_dropout}")
        logits_dim = num_tokens if logits_dim is None else int(logits_dim)
        if logits_dim < 1 or (tie_embedding and logits_dim != num_tokens):
            raise ValueError(f"logits_dim must be >= 1 and, with tie_embedding, equal num_tokens={num_tokens}; got "
                             f"{logits_dim}")
        kwargs = translate_x_transformers_kwargs(kwargs)
        if kwargs:
            raise TypeError(f"TransformerWrapper: unknown option(s) {sorted(kwargs)}; valid: num_tokens, max_seq_len, "
                            "attn_layers, tie_embedding, use_abs_pos_emb, emb_dropout, l2norm_embed, logits_dim, num_memory_tokens "
                            "(x-transformers options without an equivalent: docs/models.md, migration table)")
        self.num_tokens, self.max_seq_len, self.logits_dim = num_tokens, max_seq_len, logits_dim
        self.attn_layers = attn_layers
        dim, plan = attn_layers.dim, attn_layers.plan
        self.token_emb = TokenEmbedding(num_tokens, dim, l2norm=l2norm_embed)
        wants_absolute = plan.embedding == "absolute" or (
            bool(use_abs_pos_emb) and plan.embedding is None and not plan.rotary and plan.bias is None
        )
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len, l2norm=l2norm_embed) if wants_absolute else None
        if l2norm_embed and self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.emb.weight, std=1e-5)
        self.emb_dropout = nn.Dropout(emb_dropout) if emb_dropout > 0 else nn.Identity()
        self.num_memory_tokens = num_memory_tokens
        self.memory_tokens = memory_parameter(num_memory_tokens, dim)
        self.to_logits = nn.Linear(dim, logits_dim, bias=False)
        if tie_embedding:
            self.to_logits.weight = self.token_emb.emb.weight

    # ------------------------------------------------------------------ hub-style directories

    def save_pretrained(self, save_directory: str | Path, *, tokenizer=None, **kwargs):
        """``config.json`` + ``model.safetensors`` (+ README.md model card, + the tokenizer's files).

        Raises:
            ValueError: the model was not built from a ModelConfig (no config to write).
        """
        check_saveable(self)
        out = super().save_pretrained(save_directory, **kwargs)
        if tokenizer is not None:
            save_tokenizer(tokenizer, Path(save_directory))
        return out

    def _save_pretrained(self, save_directory: Path) -> None:
        save_weights(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        return build_from_pretrained(cls, model_id, model_kwargs, map_location=map_location, revision=revision,
                                     cache_dir=cache_dir, force_download=force_download,
                                     local_files_only=local_files_only, token=token)

    @classmethod
    def from_config(cls, cfg: ModelConfig | dict[str, Any]) -> TransformerWrapper:
        """The model described by ``cfg`` (a :class:`ModelConfig` or a plain dict of its fields).

        Raises:
            ValueError: invalid values (unknown kind, scheme, geometry, incompatible
                options), naming the field ``model.<name>`` and the fix.
        """
        if not isinstance(cfg, ModelConfig):
            cfg = model_config_from_dict(dict(cfg))
        if cfg.num_tokens is None:  # "from the data", and there is none here: bytes
            cfg = replace(cfg, num_tokens=BYTE_VOCAB)
        validate_model_config(cfg)  # the one validation: the layers are built from checked options
        layer_cls = Decoder if cfg.kind == "decoder" else Encoder
        layers = layer_cls.from_options(config_layer_options(cfg), causal=cfg.kind == "decoder")
        model = cls(attn_layers=layers, num_tokens=cfg.num_tokens, max_seq_len=cfg.max_seq_len,
                    tie_embedding=cfg.tie_embedding, num_memory_tokens=cfg.num_memory_tokens)
        model._hub_mixin_config = asdict(cfg)  # config.json of save_pretrained (xforget.models.pretrained)
        return model

    @property
    def position_limit(self) -> int | None:
        """Longest sequence the model accepts: ``max_seq_len`` with an absolute position
        table, None (unlimited) for relative schemes."""
        return self.max_seq_len if self.pos_emb is not None else None

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        cache: Cache | None = None,
        return_cache: bool = False,
        return_embeddings: bool = False,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
        return_intermediates: bool = False,
    ) -> Tensor | tuple[Tensor, Cache]:
        """Logits for token ids.

        Args:
            x: (batch, n) int64 token ids; with a ``cache``, only the new tokens.
            mask: (batch, n) bool, True for real tokens (pads may be anywhere;
                pads neither attend-to-matter nor move positions), or None.
            cache: a :class:`Cache` from an earlier call with ``return_cache=True``.
            return_cache: also return the updated cache.
            return_embeddings: return the final hidden states (batch, n, dim) instead of logits.
            context, context_mask: (batch, m, dim) float and (batch, m) bool (True = real), for
                cross-attention layers (the decoder of :class:`~xforget.models.xtransformer.XTransformer`).
            document_ids: (batch, n) int64, non-decreasing along each row: packed documents
                (DESIGN.md section 7). A token attends only to tokens of its own document, the
                KV-shift never crosses a boundary, and positions (rotary, xPos, absolute,
                sinusoidal) restart at 0 with every document, so each document gives what it
                gives alone. With a cache the ids continue the cached ones (a cache built without
                ids is one document, the first new token's); new tokens without ids continue the
                last cached document. None: one document per row (today's behaviour, unchanged).
                With ``num_memory_tokens`` (causal layers): every document sees the memory tokens as if
                they stood directly in front of it (positions 0..M-1 for the memory, M, M+1, ... from
                each document's start; the forget gate from a memory key sums the memory's gates after
                it and the document's; a document's first token KV-shifts in the last memory token), so
                each document gives what it gives alone, logits and gradients. Served by the
                materialised attention path, O(n^2) memory per layer (docs/kernels.md). The id
                ``torch.iinfo(torch.int64).min`` is reserved for the memory. With a cache: ids
                continue the cached documents or start new ones, which see the cached memory; new
                tokens without ids continue the last document; a cache built without ids is one
                document, memory included, which new ids may only continue.
            return_intermediates: x-transformers' flag; refused (``TypeError``): its per-layer hiddens and
                attention maps have no equivalent here; ``return_embeddings=True`` gives the final hidden
                states, ``AutoregressiveWrapper.forward(..., return_outputs=True)`` the logits and last
                hidden states of one pass (docs/models.md, migration table).
        Returns:
            logits (batch, n, logits_dim) float (logits_dim = num_tokens unless set), or (logits, cache).
        Raises:
            ValueError: token id out of range; sequence beyond the absolute
                position table; mask or document_ids shape mismatch; document_ids not
                integers or decreasing along a row; with ``num_memory_tokens``: document_ids in a
                bidirectional (Encoder) model (the memory would see every document), the reserved id,
                or new documents on a cache built without ids.
        """
        if return_intermediates:
            raise TypeError("TransformerWrapper.forward(return_intermediates=True) (x-transformers' per-layer "
                            "intermediates) is not supported: return_embeddings=True gives the final hidden states, "
                            "AutoregressiveWrapper.forward(..., return_outputs=True) the logits and last hidden "
                            "states of one pass (docs/models.md, migration table)")
        b, n = x.shape
        if mask is not None and mask.shape != x.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal token shape {tuple(x.shape)}")
        fresh = cache is None or cache.seen is None
        seen = _seen(cache, b, x.device)
        n_mem = memory_to_prepend(self.memory_tokens, cache)
        key_docs = _key_documents(cache, document_ids, b, n, n_mem)
        shared_memory = key_docs is not None and self.memory_tokens is not None
        if shared_memory:
            _check_memory_documents(self.attn_layers.causal, cache, document_ids, n_mem)
        mask = extend_mask(mask, n_mem)
        if key_docs is not None:
            key_mask = _join_masks(None if cache is None else cache.mask, mask, cache.length if cache else 0, b,
                                   n_mem + n, x.device)
            positions = document_positions(key_docs, key_mask, n_mem + n, memory=shared_memory)
        else:
            positions = self._positions(b, n_mem + n, mask, None if fresh else seen, x.device)

        h = self.token_emb(x)
        if self.pos_emb is not None:  # x-transformers' order: the table, then the memory
            h = h + self.pos_emb(input_positions(positions, n_mem, self.num_memory_tokens))
        h = prepend_memory(self.memory_tokens, self.emb_dropout(h), n_mem)
        h, new_cache = run_layers(self.attn_layers, h, positions, mask=mask, cache=cache, seen=seen,
                                  return_cache=return_cache, context=context, context_mask=context_mask,
                                  document_ids=key_docs, document_memory=shared_memory)
        h = h[:, n_mem:]
        out = h if return_embeddings else self.to_logits(h)
        return (out, new_cache) if return_cache else out

    @staticmethod
    def _positions(b: int, n: int, mask: Tensor | None, seen: Tensor | None, device) -> Tensor:
        """Int64 position of each new token: real tokens count from the row's first real token.

        ``seen``: (b,) real tokens cached before this call, or None (nothing cached). Returns (n,)
        when nothing is cached and there is no mask (every row alike: a matrix bias stays one
        (h, n, n) tensor), else (b, n). With a cache the positions are always per row: asking
        whether every row sits at the same offset would read ``seen`` on the host (a device sync
        per decoded token) and branch on data, which ``torch.compile(fullgraph=True)`` cannot trace
        (x-transformers #304 is the same problem in the peer).
        """
        if seen is None:
            if mask is None:
                return torch.arange(n, device=device)
            seen = torch.zeros(b, dtype=torch.long, device=device)
        if mask is None:
            return seen[:, None] + torch.arange(n, device=device)
        return seen[:, None] + (mask.long().cumsum(-1) - 1).clamp(min=0)


def _key_documents(cache: Cache | None, document_ids: Tensor | None, b: int, n: int, n_mem: int = 0
                   ) -> Tensor | None:
    """(b, n_cached + n_mem + n) int64 document ids of every key, or None when there are no documents.

    ``n_mem`` memory tokens prepended in this call take the id
    :data:`~xforget.ops.documents.MEMORY_DOCUMENT` (every document sees them).

    Raises:
        ValueError: ``document_ids`` not (b, n) integers non-decreasing along each row (cached ids included).
    """
    cached = None if cache is None else cache.documents
    if document_ids is None and cached is None:
        return None
    n_cached = cache.length if cache is not None else 0
    if document_ids is None:  # generation continues the last cached document
        return torch.cat((cached, cached[:, -1:].expand(b, n)), dim=1)
    check_document_ids(document_ids, b, n)
    new = document_ids.long()
    if n_mem:
        new = torch.cat((new.new_full((b, n_mem), MEMORY_DOCUMENT), new), dim=1)
    if n_cached and cached is None:  # a cache without ids is one document: the first new token's
        cached = document_ids[:, :1].long().expand(b, n_cached)
    docs = new if cached is None else torch.cat((cached, new), dim=1)
    return check_document_ids(docs, b, docs.shape[1])


def _check_memory_documents(causal: bool, cache: Cache | None, document_ids: Tensor | None, n_mem: int) -> None:
    """Memory tokens with packed documents: what the model cannot give as "each document alone".

    Raises:
        ValueError: bidirectional layers (the memory would see, and mix, every document of the row);
            document ids using the reserved id of the memory; new documents on a cache built without
            ids (its memory is part of its one document, later documents would not see it).
    """
    if not causal:
        raise ValueError("document_ids (packed documents) cannot be combined with num_memory_tokens in a "
                         "bidirectional (Encoder) model: the memory tokens attend to every document of the row, "
                         "so a document would not give what it gives alone; use a Decoder or one document per row")
    if document_ids is None or torch.compiler.is_compiling():  # the checks below read the ids on the host
        return
    # ids are non-decreasing: the first is the least; narrower integer ids cannot hold the reserved one
    if document_ids.dtype == torch.int64 and bool((document_ids[:, 0] == MEMORY_DOCUMENT).any()):
        raise ValueError(f"document id {MEMORY_DOCUMENT} (the smallest int64) is reserved for the memory tokens")
    if cache is not None and cache.documents is None and not n_mem and bool((document_ids != document_ids[:, :1]).any()):
        raise ValueError("a cache built without document_ids is one document (its memory tokens included): new "
                         "tokens can only continue it; pass document_ids from the first call to start new "
                         "documents that see the memory tokens")


def document_positions(document_ids: Tensor, key_mask: Tensor | None, n: int, memory: bool = False) -> Tensor:
    """(b, n) positions of the last ``n`` keys counted from their document's first real token.

    ``document_ids`` (b, n_keys) int64 of all keys (cached and new); ``key_mask`` (b, n_keys) bool or
    None. Pads take the position of the real token before them, as without documents.
    ``memory``: the keys with id :data:`~xforget.ops.documents.MEMORY_DOCUMENT` (the row's first) are
    memory tokens at positions 0..M-1, and every document counts on from M, as it would alone.
    """
    real = torch.ones_like(document_ids) if key_mask is None else key_mask.long()
    count = real.cumsum(-1)
    starts = segment_starts(document_ids)
    before = torch.where(starts > 0, count.gather(-1, (starts - 1).clamp_min(0)), 0)
    pos = count - before - 1
    if memory:
        mem = memory_keys(document_ids)
        pos = pos + torch.where(mem, 0, (real * mem).sum(-1, keepdim=True))
    return pos.clamp(min=0)[:, -n:]


def _seen(cache: Cache | None, b: int, device) -> Tensor:
    """Real tokens each row has seen before this call: (b,) int64 (zeros without a cache)."""
    if cache is None or cache.seen is None:
        return torch.zeros(b, dtype=torch.long, device=device)
    return cache.seen


def run_layers(
    layers: AttentionLayers, h: Tensor, positions: Tensor, *, mask: Tensor | None, cache: Cache | None,
    seen: Tensor, return_cache: bool, context: Tensor | None, context_mask: Tensor | None,
    document_ids: Tensor | None = None, document_memory: bool = False,
) -> tuple[Tensor, Cache | None]:
    """Run the attention layers over embedded inputs, with the KV-cache bookkeeping every wrapper shares.

    Args:
        h: (batch, n, dim) embedded new inputs; positions: their positions, (n,) or (batch, n) int64.
        mask: (batch, n) bool, True = real, or None; cache: from an earlier call, or None.
        seen: (batch,) int64 real tokens before this call (:func:`_seen`).
        return_cache: build the updated cache (else None is returned for it).
        context, context_mask: for cross-attention layers.
        document_ids: (batch, n_cached + n) int64 packed documents of every key, or None.
        document_memory: the keys with id :data:`~xforget.ops.documents.MEMORY_DOCUMENT` are memory
            tokens every document sees (:func:`xforget.ops.attend`).
    Returns:
        (hidden states (batch, n, dim), the updated :class:`Cache` or None).
    """
    b, n = h.shape[:2]
    key_mask = _join_masks(None if cache is None else cache.mask, mask, cache.length if cache else 0, b, n, h.device)
    h, layer_caches = layers(
        h, positions=positions, mask=mask, key_mask=key_mask,
        caches=cache.layers if cache is not None and cache.layers else None,
        context=context, context_mask=context_mask, document_ids=document_ids,
        document_memory=document_memory,
    )
    if not return_cache:
        return h, None
    new_seen = seen + (n if mask is None else mask.sum(-1))
    return h, Cache(layers=layer_caches, mask=key_mask, seen=new_seen, documents=document_ids)


def _join_masks(cached: Tensor | None, new: Tensor | None, n_cached: int, b: int, n: int, device) -> Tensor | None:
    if cached is None and new is None:
        return None
    if cached is None and n_cached:
        cached = torch.ones(b, n_cached, dtype=torch.bool, device=device)
    if new is None:
        new = torch.ones(b, n, dtype=torch.bool, device=device)
    return new if cached is None else torch.cat((cached, new), dim=1)


def build_model(cfg: ModelConfig | dict[str, Any]) -> TransformerWrapper:
    """Instantiate the TransformerWrapper described by ``cfg`` (:meth:`TransformerWrapper.from_config`).

    Raises:
        ValueError: invalid values (unknown kind, scheme, geometry, incompatible
            options), naming the field ``model.<name>`` and the fix.
    """
    return TransformerWrapper.from_config(cfg)
