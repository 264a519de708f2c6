"""Byte-level corpora (vocabulary 256) and the batches drawn from them.

* :mod:`.load`        -- :func:`load_corpus`: the corpus a data config names.
* :mod:`.stdlib`      -- the installed Python standard library's sources (default; offline).
* :mod:`.text`        -- any file.
* :mod:`.shakespeare` -- Tiny Shakespeare (local file or a checked download).
* :mod:`.batches`     -- the fixed train/validation split, step-seeded training
  windows and the fixed validation windows.
"""

from xforget.data.batches import Split, TrainBatches, split_corpus, val_windows
from xforget.data.corpus_cache import cache_dir
from xforget.data.corpus import Corpus, DataError
from xforget.data.load import load_corpus

__all__ = ["Corpus", "DataError", "Split", "TrainBatches", "cache_dir", "load_corpus", "split_corpus", "val_windows"]
