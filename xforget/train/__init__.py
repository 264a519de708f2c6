"""Training: ``xforget-train`` / ``python -m xforget.train`` (Hydra CLI) and its pieces.

* :mod:`.config`     -- typed config dataclasses (Hydra ConfigStore schema), validation, error messages.
* :mod:`.loop`       -- :func:`train`, the loop, top to bottom.
* :mod:`.checkpoint` -- atomic checkpoints, resume, :func:`load_model` for a run directory.
* :mod:`.schedule`   -- warmup + cosine learning rate.
* :mod:`.metrics`    -- ``metrics.jsonl``, TensorBoard, model FLOPs per token and MFU.
* :mod:`.distributed` -- torchrun: process group, DDP / FSDP2 helpers, rank-0-only work.
* :mod:`.cli`        -- the Hydra entry point :func:`main`.
"""

from xforget.train.checkpoint import CheckpointError, load_model
from xforget.train.config import ConfigError, TrainConfig, compose_config, to_train_config
from xforget.train.loop import TrainingError, TrainResult, train

__all__ = [
    "CheckpointError", "ConfigError", "TrainConfig", "TrainResult", "TrainingError",
    "compose_config", "load_model", "to_train_config", "train",
]
