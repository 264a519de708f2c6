"""Command-line values that Hydra's override grammar cannot take as they are: paths and free text.

Hydra lexes every ``key=value`` argument; a bare value cannot hold ``~`` at its
start, ``(``, ``[``, quotes and other characters, so ``data.path=~/notes.txt``
fails with a lexer error. Path-valued keys (:data:`PATH_KEYS`) are therefore
taken as literal strings: ``~`` is expanded and, when the bare value does not
parse, the value is quoted for Hydra. Free text (``xforget-generate prompt=...``)
is taken out of the argument list before Hydra sees it (see :mod:`xforget.commands.generate`).
"""

from __future__ import annotations

import os
from pathlib import Path

PATH_KEYS = frozenset({"data.path", "data.cache_dir", "hydra.run.dir", "hydra.sweep.dir", "trainer.init_from",
                       "checkpoint", "out", "prompt_file"})


def emit(text: str) -> None:
    """Print ``text`` to stdout; a closed pipe (``... --help | head``) ends quietly, without a traceback."""
    import sys

    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _parses(arg: str) -> object:
    """The value Hydra parses from ``arg`` (``key=value``), or an exception instance if it cannot."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([arg])[0].value()
    except Exception as exc:  # Hydra's lexer/parser errors
        return exc


def hydra_quote(value: str) -> str:
    """``value`` as a single-quoted Hydra string (quotes and the backslashes before them escaped)."""
    out, backslashes = [], 0
    for ch in value:
        if ch == "\\":
            backslashes += 1
            continue
        if ch == "'":
            out.append("\\" * (2 * backslashes) + "\\'")
        else:
            out.append("\\" * backslashes + ch)
        backslashes = 0
    out.append("\\" * (2 * backslashes))  # backslashes before the closing quote
    return "'" + "".join(out) + "'"


def literal_paths(argv: list[str], keys: frozenset[str] = PATH_KEYS) -> list[str]:
    """``argv`` with the values of path keys made literal: ``~`` expanded, quoted for Hydra if needed.

    Already quoted values, and values Hydra reads as the same string, are left alone
    (so interpolations such as ``${now:...}`` and multirun sweeps ``a,b`` keep working).

    Raises:
        ValueError: a value that cannot be passed even quoted; names the key and the quoting to use.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") not in keys or not value or value[0] in "'\"":
            out.append(arg)
            continue
        if value.startswith("~"):
            value = os.path.expanduser(value)
        if not isinstance(_parses(f"{key}={value}"), Exception):
            out.append(f"{key}={value}")
            continue
        quoted = f"{key}={hydra_quote(value)}"
        if _parses(quoted) != value:
            raise ValueError(f"cannot read the value of {key}: {value!r}; quote it for Hydra, e.g. {key}='...' "
                             "(inside the shell's double quotes)")
        out.append(quoted)
    return out


def writable_path_problem(key: str, value: str, *, is_dir: bool) -> str | None:
    """Why ``key=value`` cannot be written (a parent that is a file, or the path itself of the wrong
    kind), as one line naming the key; None when it can. Checked before any work starts."""
    path = Path(value).expanduser()
    if path.exists() and path.is_dir() != is_dir:
        kind = "a directory" if path.is_dir() else "a file"
        return f"{key}={value}: exists and is {kind}; give {'a directory' if is_dir else 'a file path'}"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{key}={value}: {parent} is a file, not a directory; choose another path"
            break
    return None
