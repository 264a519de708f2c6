"""The fixed split, training windows as a pure function of the step, and validation windows.

* Split: the first ``1 - val_fraction`` of the bytes train, the last
  ``val_fraction`` validate (default 5%; at least ``seq_len + 1`` bytes each).
* Training: step ``s`` uses ``batch_size * grad_accum`` random windows of
  ``seq_len + 1`` bytes whose starts come from a ``torch.Generator`` seeded by
  ``(seed, s)`` only. The data order therefore needs no state: a resumed run
  draws exactly the batches the uninterrupted run would have drawn, and
  ``grad_accum=4, batch_size=8`` sees the same windows as ``batch_size=32``.
* Validation: ``n`` windows with evenly spaced starts over the validation
  bytes (deterministic, same for every evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from xforget.data.corpus import DataError


@dataclass
class Split:
    train: Tensor  # uint8 (n_train,)
    val: Tensor  # uint8 (n_val,)


def as_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def split_corpus(data: bytes | Tensor, val_fraction: float, seq_len: int) -> Split:
    """Train = leading bytes, validation = the last ``val_fraction`` (rounded down).

    Raises:
        DataError: the corpus is too small for one window in each part.
    """
    t = data if isinstance(data, Tensor) else as_tensor(data)
    n = t.numel()
    n_val = int(n * val_fraction)
    if n_val < seq_len + 1 or n - n_val < seq_len + 1:
        raise DataError(f"corpus of {n} bytes is too small for seq_len={seq_len} with val_fraction={val_fraction}: "
                        f"each split needs at least {seq_len + 1} bytes")
    return Split(train=t[: n - n_val], val=t[n - n_val:])


def _numel(data) -> int:
    return data.numel() if isinstance(data, Tensor) else len(data)


def _windows(data, starts: Tensor, seq_len: int) -> Tensor:
    """Windows ``data[s : s + seq_len + 1]`` for each start, int64; ``data`` is a tensor or a
    (memory-mapped) numpy array, of which only the windows are read."""
    if isinstance(data, Tensor):
        offsets = torch.arange(seq_len + 1)
        return data[starts[:, None] + offsets].long()
    index = starts.numpy()[:, None] + np.arange(seq_len + 1)
    return torch.from_numpy(data[index].astype(np.int64))


def step_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed from (seed, step) (splitmix-style mixing; no collisions in practice)."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % (1 << 64)
    x ^= x >> 29
    return x % (1 << 63)


class TrainBatches:
    """``batches(step)`` -> (grad_accum, batch_size, seq_len + 1) int64 windows for that step.

    ``train`` is a tensor (bytes in memory) or a numpy array such as a memory-mapped
    token shard (:mod:`.tokens`); the starts are the same for both.
    """

    def __init__(self, train, seq_len: int, batch_size: int, grad_accum: int = 1, seed: int = 0) -> None:
        if _numel(train) < seq_len + 1:
            raise DataError(f"training split of {_numel(train)} tokens is shorter than seq_len + 1 = {seq_len + 1}")
        self.train, self.seq_len, self.batch_size, self.grad_accum, self.seed = train, seq_len, batch_size, grad_accum, seed

    def __call__(self, step: int) -> Tensor:
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        high = _numel(self.train) - self.seq_len  # starts in [0, n - seq_len - 1]
        starts = torch.randint(0, high, (self.grad_accum * self.batch_size,), generator=g)
        return _windows(self.train, starts, self.seq_len).view(self.grad_accum, self.batch_size, self.seq_len + 1)


def val_windows(val, seq_len: int, count: int) -> Tensor:
    """``count`` windows (count, seq_len + 1) int64 with evenly spaced starts over ``val`` (tensor or numpy array)."""
    last = _numel(val) - seq_len - 1
    starts = torch.linspace(0, last, count).round().long() if count > 1 else torch.zeros(1, dtype=torch.long)
    return _windows(val, starts, seq_len)
