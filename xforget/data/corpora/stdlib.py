"""The default corpus: this Python's standard library sources, offline on any machine.

Files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, except anything
inside a ``site-packages`` or ``dist-packages`` directory and the test packages
(any directory named ``test``, ``tests`` or ``idle_test``, e.g. ``test/``,
``unittest/test/``, ``idlelib/idle_test/``). They are concatenated in sorted
relative-path order (POSIX separators), each followed by a newline if it does
not end with one. About 12 MB on CPython 3.11.

The result is cached as ``stdlib-py<version>-<root hash>.bin`` with a JSON
beside it (Python version, root, file count, byte count, sha256).

:func:`stdlib_documents_dir` writes the same files (with the same added newlines) into a
directory instead, one document per file for ``xforget-prepare``: the blob is one document,
which ``data.pack_documents=true`` cannot cut (``xforget-compare prepare.input=stdlib_files``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sysconfig
from pathlib import Path

from xforget.data.corpora.cache import atomic_write_bytes
from xforget.data.corpus import Corpus, DataError, sha256

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[str]:
    """Relative POSIX paths of the corpus files under ``root``, sorted."""
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]) or not p.is_file():
            continue
        out.append(rel.as_posix())
    return sorted(out)


def build_stdlib_corpus(root: Path) -> tuple[bytes, list[str]]:
    """Concatenate the corpus files under ``root`` (deterministic); returns (bytes, file list)."""
    files = stdlib_files(root)
    if not files:
        raise DataError(f"no Python sources found under the standard library directory {root}")
    parts = []
    for rel in files:
        data = (root / rel).read_bytes()
        parts.append(data if data.endswith(b"\n") or not data else data + b"\n")
    return b"".join(parts), files


def load_stdlib_corpus(cache: Path, root: Path | None = None) -> Corpus:
    """The stdlib corpus, built once and cached (rebuilt if the cache does not check out)."""
    root = Path(root) if root is not None else stdlib_root()
    version = platform.python_version()
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    blob, meta_path = cache / f"stdlib-py{version}-{tag}.bin", cache / f"stdlib-py{version}-{tag}.json"
    if blob.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            data = blob.read_bytes()
            if len(data) == meta["bytes"] and sha256(data) == meta["sha256"]:
                return Corpus(data, "stdlib", meta)
        except (OSError, ValueError, KeyError):
            pass  # rebuild below
    data, files = build_stdlib_corpus(root)
    meta = {
        "python_version": version,
        "implementation": platform.python_implementation(),
        "root": str(root),
        "files": len(files),
        "bytes": len(data),
        "sha256": sha256(data),
    }
    atomic_write_bytes(blob, data)
    atomic_write_bytes(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    return Corpus(data, "stdlib", meta)


def stdlib_documents_dir(cache: Path, root: Path | None = None) -> tuple[Path, str]:
    """The stdlib corpus as a directory of its files (one document each): (directory, sha256).

    The files keep their relative paths and the newline :func:`build_stdlib_corpus` adds, so their
    sorted concatenation is the cached blob byte for byte and the sha256 is the blob's. Built once
    next to the blob (``stdlib-py<version>-<root hash>-files/``), into a temporary directory renamed
    into place; a hidden ``.sha256`` file (which ``xforget-prepare`` does not read) marks it complete.
    """
    corpus = load_stdlib_corpus(cache, root)
    root = Path(root) if root is not None else stdlib_root()
    blob_name = f"stdlib-py{corpus.meta['python_version']}-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]}"
    target, sha = cache / f"{blob_name}-files", corpus.meta["sha256"]
    marker = target / ".sha256"
    if marker.is_file() and marker.read_text().strip() == sha:
        return target, sha
    tmp = cache / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in stdlib_files(root):
        data = (root / rel).read_bytes()
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data if data.endswith(b"\n") or not data else data + b"\n")
    (tmp / ".sha256").write_text(sha + "\n")
    shutil.rmtree(target, ignore_errors=True)  # an incomplete or stale directory
    tmp.rename(target)
    return target, sha
