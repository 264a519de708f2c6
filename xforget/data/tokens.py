"""Training on a prepared dataset (``data=tokens data.path=DIR``): memory-mapped token shards.

:func:`load_tokens` opens ``train.bin`` / ``val.bin`` once with ``numpy.memmap``
(read-only, nothing read up front; the operating system pages in what the
windows touch) and checks them against ``meta.json``. Windows are gathered
from the maps with the same step-seeded starts as the byte path
(:class:`~xforget.data.batches.TrainBatches`), so the data order is a pure
function of ``(seed, step)`` and a byte-level prepared file gives exactly the
byte path's windows.

Token ids are checked against the vocabulary when the dataset is opened, so that an id beyond it (a
hand-edited ``meta.json``, a damaged shard) fails in one line before training writes anything rather
than as an index error mid-run: ``meta.json`` records each split's largest id (``max_id``, found while
``xforget-prepare`` writes), and shards of up to ``SCAN_LIMIT`` tokens (or without a recorded
``max_id``) are also scanned, in chunks (``numpy.max``: ~0.1 s per 100M tokens from the page cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xforget.data.corpus import DataError
from xforget.data.prepare import read_meta

LN2 = math.log(2.0)
SCAN_LIMIT = 1 << 28  # tokens per shard scanned for its largest id at every open; above, meta.json's max_id
SCAN_CHUNK = 1 << 24


@dataclass
class TokenData:
    """The two shards of a prepared dataset, memory-mapped, and its ``meta.json``."""

    path: Path
    meta: dict
    train: np.ndarray  # (n_train,) uint16/uint32 memmap
    val: np.ndarray  # (n_val,) uint16/uint32 memmap
    info: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def tokens_per_byte(self, split: str = "val") -> float:
        """``tokens / bytes`` of the split: bits per byte = loss (nats per token) x this / ln 2."""
        s = self.meta[split]
        return s["tokens"] / s["bytes"]

    def describe(self) -> str:
        m = self.meta
        return (f"tokens {self.path}: {m['train']['tokens']:,} train / {m['val']['tokens']:,} val tokens ({m['dtype']}), "
                f"tokenizer {m['tokenizer']} (vocabulary {m['vocab_size']}), "
                f"{m['val']['bytes'] / max(m['val']['tokens'], 1):.3f} validation bytes per token")


def _map(path: Path, dtype: np.dtype, expected: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"prepared dataset is missing {path.name}: {path.resolve()} (run xforget-prepare again)")
    size = path.stat().st_size
    if size != expected * dtype.itemsize:
        raise DataError(f"{path.resolve()} holds {size} bytes, meta.json says {expected} {dtype.name} tokens "
                        f"({expected * dtype.itemsize} bytes); the directory is damaged, prepare it again")
    if expected == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(expected,))


def load_tokens(path: str | Path) -> TokenData:
    """Memory-map a prepared dataset directory.

    Raises:
        DataError: no directory, no ``meta.json``, shards that do not match it, an unknown dtype.
    """
    d = Path(path).expanduser()
    meta = read_meta(d)
    try:
        dtype = np.dtype(meta["dtype"])
    except TypeError:
        raise DataError(f"{d / 'meta.json'}: unknown dtype {meta['dtype']!r}; valid: uint16, uint32") from None
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise DataError(f"{d / 'meta.json'}: unknown dtype {meta['dtype']!r}; valid: uint16, uint32")
    train = _map(d / "train.bin", dtype, int(meta["train"]["tokens"]))
    val = _map(d / "val.bin", dtype, int(meta["val"]["tokens"]))
    for split, ids in (("train", train), ("val", val)):
        check_ids(d / f"{split}.bin", ids, int(meta["vocab_size"]), meta[split].get("max_id"))
    return TokenData(d.resolve(), meta, train, val)


def max_id(ids: np.ndarray) -> int:
    """The largest id of ``ids`` (-1 when empty), read in chunks of ``SCAN_CHUNK`` (a memmap stays unloaded)."""
    return max((int(ids[i:i + SCAN_CHUNK].max()) for i in range(0, len(ids), SCAN_CHUNK)), default=-1)


def check_ids(path: Path, ids: np.ndarray, vocab_size: int, recorded: int | None) -> None:
    """Every id of the shard ``ids`` (file ``path``) is below ``vocab_size``: by the ``max_id`` recorded in
    meta.json, and by a scan when there is none or the shard has at most ``SCAN_LIMIT`` tokens.

    Raises:
        DataError: one line naming the shard, the id and the vocabulary.
    """
    found = [int(recorded)] if recorded is not None else []
    if recorded is None or len(ids) <= SCAN_LIMIT:
        found.append(max_id(ids))
    top = max(found, default=-1)
    if top >= vocab_size:
        raise DataError(f"{path.resolve()} holds token id {top}, beyond the vocabulary of {vocab_size} (ids 0.."
                        f"{vocab_size - 1}) that meta.json gives: a damaged shard or an edited meta.json; prepare "
                        "the dataset again")
