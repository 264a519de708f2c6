"""What may change when a run is resumed, and how a change is recorded.

Re-running ``xforget-train`` into a run directory with a checkpoint resumes it
(:class:`xforget.train.checkpointer.Checkpointer` applies this policy when the run
opens its directory, before any slow work). The resumed command's config is
compared with the checkpoint's, key by key:

* **model keys** never change (the weights would not fit, or would mean
  something else): refused, see :func:`xforget.train.checkpoint.check_same_model`;
  to start a new run from trained weights use ``trainer.init_from=RUN``.
* **trajectory keys** (data, seed, optimizer, schedule, batch shape, precision:
  everything not listed below) change what the resumed steps compute; they are
  refused with one line naming the old and new values, unless the command adds
  ``trainer.resume=allow_changes``; then the change is logged and the new
  config is recorded as ``config.resume-<step>.yaml``.
* **``trainer.max_steps``** only moves the end of the run: the learning-rate
  schedule keeps the horizon of the run's first ``max_steps`` (warmup and cosine
  decay unchanged; steps past that horizon train at the final learning rate
  ``optim.min_lr_ratio * optim.lr``), so the steps of the original run are
  unchanged and there is no jump. Allowed without ``allow_changes``, logged and
  recorded. It cannot go below the steps already done.
* **bookkeeping keys** (:data:`FREE_KEYS`: how often to log, evaluate and
  checkpoint, devices, threads, progress, the sample, the logger, the data cache
  directory, the AdamW kernel ``optim.impl``) do not change the trajectory:
  allowed, logged and recorded.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from xforget.errors import ConfigError
from xforget.files import atomic_write_text
from xforget.train.config import RESUME_MODES, TrainConfig, config_to_yaml  # noqa: F401

EXTEND_KEYS = frozenset({"trainer.max_steps"})
FREE_KEYS = frozenset({
    "trainer.eval_every", "trainer.eval_batches", "trainer.log_every", "trainer.checkpoint_every",
    "trainer.keep_last", "trainer.threads", "trainer.device", "trainer.compile", "trainer.progress",
    "trainer.strategy", "trainer.peak_flops", "trainer.sample_bytes", "trainer.sample_temperature",
    "trainer.init_from", "trainer.resume", "logger", "data.cache_dir",
    "optim.impl",  # the same AdamW update computed by another kernel (for_loop / foreach / fused)
})


def flat(cfg: TrainConfig) -> dict[str, Any]:
    """``{"optim.lr": 0.002, "seed": 0, ...}``: every leaf of the config by its dotted key."""
    out: dict[str, Any] = {}
    for key, value in asdict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def config_changes(saved: TrainConfig, new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every leaf that differs, in config order (model keys included)."""
    a, b = flat(saved), flat(new)
    return [(k, a.get(k), b.get(k)) for k in b if a.get(k) != b.get(k)]


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)


def check_resume(saved: TrainConfig, cfg: TrainConfig, step: int, run_dir: Path) -> list[tuple[str, Any, Any]]:
    """The changes of ``cfg`` against the checkpoint's ``saved`` config, after the policy above.

    Model keys are checked before (by ``check_same_model``) and are not in the result.

    Raises:
        ConfigError: trajectory keys changed without ``trainer.resume=allow_changes``, or
            ``trainer.max_steps`` below the ``step`` already done.
    """
    changes = [c for c in config_changes(saved, cfg) if not c[0].startswith("model.")]
    trajectory = [c for c in changes if c[0] not in FREE_KEYS | EXTEND_KEYS]
    if trajectory and cfg.trainer.resume != "allow_changes":
        raise ConfigError(
            f"run directory {run_dir} was trained with other settings ({describe(trajectory)}); resuming would "
            "change the run: use the original values, another hydra.run.dir, or add trainer.resume=allow_changes "
            "to resume with the change (it is logged and recorded)"
        )
    if cfg.trainer.max_steps is not None and cfg.trainer.max_steps < step:
        raise ConfigError(f"invalid value trainer.max_steps={cfg.trainer.max_steps}: the run in {run_dir} has "
                          f"already done {step} steps; use trainer.max_steps >= {step}")
    return changes


def record_resume_config(run_dir: Path, step: int, cfg: TrainConfig) -> Path:
    """Write the resumed run's config as ``config.resume-<step>.yaml`` (atomic); returns its path."""
    path = Path(run_dir) / f"config.resume-{step}.yaml"
    atomic_write_text(path, config_to_yaml(cfg))
    return path
