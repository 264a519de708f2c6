"""Any file as a byte corpus: ``data=text data.path=FILE``.

The bytes are the tokens, verbatim (CRLF line endings stay two bytes), except a UTF-8 byte-order mark
at the start of the file (EF BB BF, which Windows editors write): it is no text, and left out, as
``xforget-prepare`` leaves it out, so that a byte-level prepared file keeps giving this corpus's split.
"""

from __future__ import annotations

import codecs
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
    """The file's bytes as a corpus, a leading UTF-8 byte-order mark left out (``sha256`` is the file's).

    Raises:
        DataError: missing, unreadable or empty (a file holding only the mark is empty).
    """
    raw = read_bytes(path)
    data = raw.removeprefix(codecs.BOM_UTF8)
    if not data:
        raise DataError(f"data file is empty (only a byte-order mark): {Path(path).expanduser().resolve()}")
    return Corpus(data, "text", {"path": str(Path(path).expanduser().resolve()), "bytes": len(data), "sha256": sha256(raw)})
