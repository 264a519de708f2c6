"""What training and evaluation read: one split of token ids per part, a tokenizer, and the
tokens-per-byte factor that turns a per-token loss into bits per byte of the original text.

* byte corpora (``stdlib``, ``text``, ``shakespeare``, ``mqar``, ``needle``):
  the bytes in memory, split by :func:`~xforget.data.batches.split_corpus`;
  tokenizer :class:`~xforget.data.tokenizer.ByteTokenizer`, factor 1.
* ``tokens``: a prepared dataset, memory-mapped (:mod:`.tokens`); its
  tokenizer; factor ``val tokens / val bytes`` from ``meta.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xforget.data.batches import split_corpus
from xforget.data.corpus import DataError
from xforget.data.corpora import load_corpus
from xforget.data.documents import packing_eot_id
from xforget.data.tokenizer import ByteTokenizer, load_tokenizer
from xforget.data.tokens import load_tokens


@dataclass
class TrainingData:
    train: Any  # uint8 tensor (bytes) or uint16/uint32 memmap (tokens)
    val: Any
    tokenizer: Any  # a xforget.data.tokenizer.Tokenizer
    tokens_per_byte: float  # of the validation split
    description: str
    meta: dict = field(default_factory=dict)
    eot_id: int | None = None  # data.pack_documents: documents end at this token (None: no packing)


def load_training_data(cfg, seq_len: int) -> TrainingData:
    """The train/validation token ids named by a data config (``name``, ``path``, ``val_fraction``, ...).

    Raises:
        DataError: missing data, or a split shorter than ``seq_len + 1`` tokens.
    """
    if cfg.name == "tokens":
        data = load_tokens(cfg.path)
        for part in ("train", "val"):
            n = len(getattr(data, part))
            if n < seq_len + 1:
                raise DataError(f"the {part} split of {data.path} has {n} tokens, fewer than seq_len + 1 = "
                                f"{seq_len + 1}; lower trainer.seq_len or prepare more text")
        eot = packing_eot_id(data.meta, data.path) if getattr(cfg, "pack_documents", False) else None
        return TrainingData(data.train, data.val, load_tokenizer(data.path), data.tokens_per_byte("val"),
                            data.describe() + (" (packed documents)" if eot is not None else ""), data.meta, eot)

    corpus = load_corpus(cfg)
    split = split_corpus(corpus.data, cfg.val_fraction, seq_len)
    return TrainingData(split.train, split.val, ByteTokenizer(), 1.0,
                        f"{corpus.describe()} (last {cfg.val_fraction:.0%} validate)", dict(corpus.meta))
