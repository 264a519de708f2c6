"""Test data made on the spot: about 1.1 MB of this Python's standard library sources.

Tests never read files outside the repository. The corpus is
the top-level ``*.py`` modules of the standard library, concatenated in sorted
name order and cut at :data:`SIZE` bytes; it is written once per Python version
into the temporary directory (atomically) and re-used.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

SIZE = 1_100_000  # bytes, about Tiny Shakespeare's size


def corpus_bytes(size: int = SIZE) -> bytes:
    root = Path(json.__file__).resolve().parent.parent  # the stdlib directory
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        parts.append(data if data.endswith(b"\n") else data + b"\n")
        total += len(parts[-1])
        if total >= size:
            break
    return b"".join(parts)[:size]


def corpus_path() -> Path:
    """The corpus file (created on first use)."""
    path = Path(tempfile.gettempdir()) / f"xforget-test-corpus-py{platform.python_version()}-{os.getuid()}.txt"
    if not path.is_file() or path.stat().st_size != SIZE:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(corpus_bytes())
        os.replace(tmp, path)
    return path


TEXT = corpus_path()
