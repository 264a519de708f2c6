"""Byte corpora by name: ``load_corpus(data_cfg)`` returns the bytes a :class:`~xforget.train.config.DataConfig`
names (``data=stdlib|text|shakespeare|mqar|needle``).

* :mod:`.stdlib`      -- the installed Python standard library's sources (default; offline).
* :mod:`.text`        -- any file.
* :mod:`.shakespeare` -- Tiny Shakespeare (local file or a checked download).
* :mod:`.cache`       -- where downloaded and assembled corpora are cached.

Adding a corpus format: a module in this package that returns a :class:`~xforget.data.corpus.Corpus`,
and one branch in :func:`load_corpus`. (Token datasets of any size go through ``xforget-prepare``:
:mod:`xforget.data.prepare_inputs` reads its input formats.)
"""

from __future__ import annotations

from xforget.data.corpora import shakespeare, stdlib, text
from xforget.data.corpora.cache import cache_dir
from xforget.data.corpus import Corpus, DataError
from xforget.data.synthetic import load_synthetic

SYNTHETIC_BYTES = 1 << 21  # default size of a synthetic corpus (data=mqar / data=needle)


def load_corpus(cfg) -> Corpus:
    """Load the corpus for ``cfg`` (fields ``name``, ``path``, ``cache_dir``; ``num_bytes`` and
    ``example_len`` for the synthetic tasks ``mqar`` / ``needle``, generated from seed 0).

    Raises:
        DataError: missing/unreadable file, failed download or checksum, unknown name.
    """
    if cfg.name == "stdlib":
        return stdlib.load_stdlib_corpus(cache=cache_dir(cfg.cache_dir))
    if cfg.name == "text":
        if not cfg.path:
            raise DataError("data=text needs a file: data.path=FILE")
        return text.load_text(cfg.path)
    if cfg.name == "shakespeare":
        return shakespeare.load_shakespeare(cfg.path, cache=cache_dir(cfg.cache_dir))
    if cfg.name in ("mqar", "needle"):
        num_bytes = getattr(cfg, "num_bytes", None) or SYNTHETIC_BYTES
        try:
            return load_synthetic(cfg.name, seed=0, num_bytes=num_bytes, example_len=getattr(cfg, "example_len", None))
        except ValueError as exc:  # e.g. an example length the task cannot fill
            raise DataError(f"data={cfg.name}: {exc}") from None
    if cfg.name == "tokens":
        raise DataError("data=tokens is a prepared dataset of token ids, not a byte corpus; "
                        "read it with xforget.data.training.load_training_data")
    raise DataError(f"unknown data set {cfg.name!r}; valid: stdlib, text, shakespeare, mqar, needle, tokens")
