"""The layout of a training run directory, as far as reading it needs: where complete checkpoints are.

Both the writer (:mod:`xforget.train.checkpoint`) and the reader (:mod:`xforget.train.loading`) use it,
so neither imports the other to learn the layout.

    RUN_DIR/checkpoints/step_0000500/COMPLETE    one complete checkpoint (written last)
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """Unusable checkpoint or run directory; the message is one line for the user."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def weights_step(path: str | Path) -> int | None:
    """The training step of the weights that :func:`~xforget.train.loading.load_trained` reads from ``path``:
    a checkpoint directory's own step (``step_0000005/`` with its ``COMPLETE`` marker: 5), a run directory's
    latest complete checkpoint; None for a run with only final weights, a hub-style directory or no model.
    The one answer to "which step is this", for every command that describes a trained model."""
    path = Path(path).expanduser()
    m = _STEP_DIR.match(path.name)
    if m and (path / MARKER).is_file():
        return int(m.group(1))
    found = complete_checkpoints(path)
    return found[-1][0] if found else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def missing_model_path(path: str | Path) -> str | None:
    """Why ``path`` names no trained model before anything is loaded: a local path that does not exist and
    cannot be a hub repo id (``owner/name``; an absolute, home or dotted path is a mistyped directory).
    None when it exists or may be a repo id. Light (no torch): the commands check it first.
    """
    if Path(path).expanduser().exists():
        return None
    text = str(path)
    if text.count("/") != 1 or text.startswith(("/", "~", ".")) or text.endswith("/"):
        return f"no trained model in {path}: it does not exist"
    return None


INIT_FROM_ACCEPTS = ("expected a run directory (with checkpoints/step_*/ or model.safetensors), a checkpoint "
                     "directory (checkpoints/step_*/) or a .safetensors file")


def missing_init_from(source: str | Path | None, run_dir: str | Path | None = None) -> str | None:
    """Why ``trainer.init_from=source`` names nothing (the path does not exist), or None. Light (no torch):
    the train command checks it first. None as well when ``run_dir`` holds a complete checkpoint (that run
    resumes from it and does not read ``source``)."""
    if not source or Path(source).expanduser().exists():
        return None
    if run_dir is not None and latest_checkpoint(run_dir) is not None:
        return None
    return f"trainer.init_from={source}: no such file or directory; {INIT_FROM_ACCEPTS}"


def short_error(exc: BaseException) -> str:
    """``TypeName: first line`` of an exception, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
