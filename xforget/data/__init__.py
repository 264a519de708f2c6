"""Data: what training and evaluation read, and the commands that prepare it.

* :mod:`.corpus`      -- :class:`Corpus` (raw bytes + description) and :class:`DataError`.
* :mod:`.corpora`     -- byte corpora by name (``data=stdlib|text|shakespeare``; :func:`load_corpus`),
  one module per format, and their download/cache directory.
* :mod:`.synthetic`, :mod:`.haystack` -- generated tasks (``data=mqar|needle``) and needle-in-a-haystack prompts.
* :mod:`.prepare_inputs`, :mod:`.tokenizer`, :mod:`.prepare`, :mod:`.tokens` -- ``xforget-prepare``: read
  files / JSON lines / Parquet / ``datasets``, tokenize, write memory-mapped token shards (``data=tokens``).
* :mod:`.training`    -- one split of token ids per part, for any data config (bytes or tokens).
* :mod:`.batches`     -- the fixed train/validation split, step-seeded training windows, fixed validation windows.
"""

from typing import TYPE_CHECKING

from xforget.lazy import lazy_attributes

# Loaded on first use, so that `xforget.data.corpus` and `xforget.data.prepare` import without torch.
__getattr__, __dir__ = lazy_attributes(__name__, {
    "Split": "xforget.data.batches", "TrainBatches": "xforget.data.batches", "split_corpus": "xforget.data.batches",
    "val_windows": "xforget.data.batches", "load_corpus": "xforget.data.corpora",
    "cache_dir": "xforget.data.corpora.cache", "Corpus": "xforget.data.corpus", "DataError": "xforget.data.corpus",
})

if TYPE_CHECKING:
    from xforget.data.batches import Split, TrainBatches, split_corpus, val_windows
    from xforget.data.corpora import load_corpus
    from xforget.data.corpora.cache import cache_dir
    from xforget.data.corpus import Corpus, DataError

__all__ = ["Corpus", "DataError", "Split", "TrainBatches", "cache_dir", "load_corpus", "split_corpus", "val_windows"]
