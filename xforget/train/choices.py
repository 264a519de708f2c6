"""The values the training config's choice keys accept, in a module that imports no torch.

``trainer.precision``, ``trainer.compile``, ``trainer.device`` and ``logger`` are checked when the command line is
read, before torch is imported (a typo is reported in a fraction of a second, not after the
seconds torch takes to import). The modules that act on these keys (:mod:`.precision`,
:mod:`.compile`, :mod:`.trackers`) import their choices from here.
"""

from __future__ import annotations

import re
from typing import Any

from xforget.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_CHOICES = ("auto", "true", "false")
TRACKERS = ("tensorboard", "wandb")
DEVICES = "auto, cpu, cuda, cuda:N or mps"  # what trainer.device / eval.device accept (torch.device names)


def device_choice(name: str) -> bool:
    """Whether ``name`` is one of :data:`DEVICES` (``gpu`` and ``cuda0`` are not: torch would fail mid-run)."""
    return re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(name)) is not None


def compile_choice(value) -> str | None:
    """``value`` as one of :data:`COMPILE_CHOICES`, or None when it is none of them."""
    text = str(value).strip().lower()
    return text if text in COMPILE_CHOICES else None


def logger_names(logger: Any) -> list[str]:
    """``logger`` as a list of tracker names (``none`` and ``[]`` -> []).

    Raises:
        ConfigError: an unknown name, listing the valid ones.
    """
    names = [logger] if isinstance(logger, str) else list(logger or [])
    names = [n for n in names if n != "none"]
    bad = [n for n in names if n not in TRACKERS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"invalid value logger={logger!r}: must be none, one of {list(TRACKERS)} or a list of "
                          f"them, e.g. logger=[tensorboard,wandb]")
    return names
