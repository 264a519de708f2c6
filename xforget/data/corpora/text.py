"""Any file as a byte corpus: ``data=text data.path=FILE``."""

from __future__ import annotations

from pathlib import Path

from xforget.data.corpus import Corpus, DataError, sha256


def read_bytes(path: str | Path, what: str = "data file") -> bytes:
    """The bytes of ``path``; one clear :class:`DataError` line if missing, unreadable or empty."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} not found: {p.resolve()} (set data.path=FILE)") from None
    except IsADirectoryError:
        raise DataError(f"{what} is a directory, not a file: {p.resolve()}") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} {p.resolve()}: {exc.strerror or exc}") from None
    if not data:
        raise DataError(f"{what} is empty: {p.resolve()}")
    return data


def load_text(path: str | Path) -> Corpus:
    data = read_bytes(path)
    return Corpus(data, "text", {"path": str(Path(path).expanduser().resolve()), "bytes": len(data), "sha256": sha256(data)})
