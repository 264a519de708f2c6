"""Where built or downloaded corpora are cached, and an atomic file write."""

from __future__ import annotations

import os
from pathlib import Path

from xforget.files import atomic_write_bytes  # noqa: F401  (re-exported: data modules import it from here)


def cache_dir(override: str | None = None) -> Path:
    """``override``, else ``$XFORGET_CACHE``, else ``~/.cache/xforget`` (created)."""
    path = Path(override or os.environ.get("XFORGET_CACHE") or Path.home() / ".cache" / "xforget").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path

