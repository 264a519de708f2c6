"""File permissions and atomic writes shared by every module that writes results.

Temporary files (``tempfile.mkstemp``) and safetensors files are created with
mode 0600; :func:`umask_mode` gives the mode a plain ``open(path, "w")`` would
have used (0666 minus the process umask), which :func:`atomic_write_bytes` and
the checkpoint writers apply before the rename.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask_mode() -> int:
    """0o666 without the bits of the current umask (e.g. 0o644 for umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` the mode a newly created file would get from the umask."""
    os.chmod(path, umask_mode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory, fsync and ``os.replace``.

    The file gets the umask's mode (not mkstemp's 0600). Readers never see a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
