"""Byte-level corpora (vocabulary 256) and the batches drawn from them.

* :mod:`.stdlib`      -- the installed Python standard library's sources (default; offline).
* :mod:`.text`        -- any file.
* :mod:`.shakespeare` -- Tiny Shakespeare (local file or a checked download).
* :mod:`.batches`     -- the fixed train/validation split, step-seeded training
  windows and the fixed validation windows.
"""

from .batches import Split, TrainBatches, split_corpus, val_windows
from .cache import cache_dir
from .corpus import Corpus, DataError, load_corpus

__all__ = ["Corpus", "DataError", "Split", "TrainBatches", "cache_dir", "load_corpus", "split_corpus", "val_windows"]
