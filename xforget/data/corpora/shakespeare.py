"""Tiny Shakespeare (karpathy/char-rnn): a local copy, or a download checked against its sha256."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from xforget.data.corpora.cache import atomic_write_bytes
from xforget.data.corpus import Corpus, DataError, sha256
from xforget.data.corpora.text import read_bytes

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
FILENAME = "tinyshakespeare.txt"


def load_shakespeare(path: str | Path | None, cache: Path, *, url: str = URL, timeout: float = 30.0) -> Corpus:
    """Read ``path`` if given (any file, checksum only logged); else the cached or downloaded file.

    Raises:
        DataError: missing local file, download failure (offline), checksum mismatch.
    """
    if path:
        data = read_bytes(path)
        digest = sha256(data)
        return Corpus(data, "shakespeare", {"path": str(Path(path).expanduser().resolve()), "bytes": len(data),
                                            "sha256": digest, "matches_reference": digest == SHA256})
    target = cache / FILENAME
    if target.is_file() and sha256(target.read_bytes()) == SHA256:
        data = target.read_bytes()
    else:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                data = resp.read()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(f"cannot download Tiny Shakespeare from {url} ({reason}); offline? "
                            "pass a local copy with data.path=FILE") from None
        if sha256(data) != SHA256:
            raise DataError(f"downloaded Tiny Shakespeare has sha256 {sha256(data)}, expected {SHA256}; not using it")
        atomic_write_bytes(target, data)
    return Corpus(data, "shakespeare", {"path": str(target), "url": url, "bytes": len(data), "sha256": SHA256})
