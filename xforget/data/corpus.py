"""A byte corpus (:class:`Corpus`) and the data layer's error (:class:`DataError`); every corpus module
returns one (see :func:`xforget.data.corpora.load_corpus`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


class DataError(RuntimeError):
    """A data problem (missing file, failed download); the message is one line for the user."""


@dataclass
class Corpus:
    """Raw bytes plus a description recorded in the run log (source, size, sha256, ...)."""

    data: bytes
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.meta.items() if k not in ("bytes", "sha256", "files"))
        return f"{self.name}: {len(self.data):,} bytes, sha256 {self.meta.get('sha256', sha256(self.data))[:16]}… {extra}".strip()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
