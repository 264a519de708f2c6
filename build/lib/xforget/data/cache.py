"""Where built or downloaded corpora are cached, and an atomic file write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir(override: str | None = None) -> Path:
    """``override``, else ``$XFORGET_CACHE``, else ``~/.cache/xforget`` (created)."""
    path = Path(override or os.environ.get("XFORGET_CACHE") or Path.home() / ".cache" / "xforget").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
