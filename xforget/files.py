"""File permissions and atomic writes shared by every module that writes results.

Temporary files (``tempfile.mkstemp``) and safetensors files are created with
mode 0600; :func:`umask_mode` gives the mode a plain ``open(path, "w")`` would
have used (0666 minus the process umask), which the atomic writers here and
the checkpoint writers apply before the rename.

Atomic means a reader (or a process killed at any moment) sees either the old
file or directory or the complete new one, never a partial one:

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: data in memory;
* :func:`atomic_path`: a writer that needs a file name (safetensors, ``json.dump`` to a path);
* :func:`atomic_dir`: a whole directory (a prepared dataset, an exported model).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask_mode() -> int:
    """0o666 without the bits of the current umask (e.g. 0o644 for umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` the mode a newly created file would get from the umask."""
    os.chmod(path, umask_mode())


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's contents to disk; a file system that cannot fsync a directory is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write; renamed onto ``path`` when the block ends.

    On success the file is fsynced, given the umask's mode (not mkstemp's or safetensors' 0600) and
    renamed with ``os.replace``; on an exception it is deleted and ``path`` is untouched. The parent
    directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`). Readers never see a partial file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _temporary_dir_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh directory ``.<name>.tmp-<pid>`` beside ``path`` for the block to fill; it replaces ``path``
    as a whole when the block ends.

    On success every file in it is fsynced, an existing ``path`` is moved aside (``.<name>.trash-<pid>``)
    and deleted, and the new directory is renamed onto ``path``; on an exception it is deleted and ``path``
    is untouched. :func:`partial_dirs` finds what a killed process left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_temporary_dir_prefix(path)}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                fsync_path(f)
        fsync_path(tmp)
        if path.exists():
            trash = path.parent / f".{path.name}.trash-{os.getpid()}"
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def partial_dirs(path: str | Path) -> list[Path]:
    """The temporary directories of :func:`atomic_dir` for ``path`` that interrupted processes left."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if p.name.startswith(_temporary_dir_prefix(path)) and p.is_dir()]
