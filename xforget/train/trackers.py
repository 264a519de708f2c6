"""Experiment trackers beside ``metrics.jsonl``: ``logger=tensorboard``, ``logger=wandb`` or both.

``logger`` is ``none``, one name or a list (``logger=[tensorboard,wandb]``). Each tracker
gets the resolved config once (TensorBoard: a text summary ``config``; W&B: the run's
config) and every metrics record at its training step (train_loss, lr, tokens_per_s,
val_loss/val_bpb at evaluations, ...). Both are optional extras: a missing package
fails before training starts, with one line naming the extra.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from xforget.files import atomic_write_text
from xforget.train.choices import TRACKERS, logger_names  # noqa: F401  (TRACKERS: this module's name too)
from xforget.train.metrics import TensorBoardLog, tensorboard_writer_class


def check_trackers(logger: Any) -> None:
    """Fail early (ConfigError, one line) if a requested tracker's package is missing."""
    names = logger_names(logger)
    if "tensorboard" in names:
        tensorboard_writer_class()
    if "wandb" in names:
        _import_wandb()


def open_trackers(cfg, run_dir: Path, resume_step: int | None) -> list:
    """One sink (``write(record)``, ``close()``) per requested tracker."""
    names = logger_names(cfg.logger)
    sinks: list = []
    if "tensorboard" in names:
        sinks.append(TensorBoardLog(run_dir / "tensorboard", resume_step, hparams=_flat_config(cfg)))
    if "wandb" in names:
        sinks.append(WandbLog(run_dir, cfg, resume_step))
    return sinks


def _flat_config(cfg) -> dict[str, Any]:
    from dataclasses import asdict

    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = node

    walk("", asdict(cfg))
    return out


def _import_wandb():
    try:
        import wandb
    except ImportError as exc:
        from xforget.errors import ConfigError

        raise ConfigError(f"logger=wandb needs the wandb package ({exc}); install the extra: "
                          "pip install 'xforget[wandb]', or drop wandb from logger") from None
    return wandb


class WandbLog:
    """``logger=wandb``: a W&B run in ``run_dir/wandb`` (``WANDB_MODE=offline`` works without a network).

    The run id is kept in ``run_dir/wandb-run-id`` so that a resumed training continues the
    same W&B run. ``WANDB_PROJECT`` / ``WANDB_ENTITY`` choose where it goes (default project
    ``xforget``); the run is named after the run directory.
    """

    ID_FILE = "wandb-run-id"

    def __init__(self, run_dir: Path, cfg, resume_step: int | None) -> None:
        wandb = _import_wandb()
        id_file = run_dir / self.ID_FILE
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id + "\n")
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "xforget"),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=_flat_config(cfg),  # hyperparameters, once
        )

    def write(self, record: dict[str, Any]) -> None:
        values = {k: v for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._run.log(values, step=int(record["step"]))

    def close(self) -> None:
        self._run.finish()
