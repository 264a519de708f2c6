"""Training: ``xforget-train`` / ``python -m xforget.train`` (Hydra CLI) and its pieces.

* :mod:`.config`     -- typed config dataclasses (Hydra ConfigStore schema), validation, error messages.
* :mod:`.loop`       -- :func:`train`, the loop, top to bottom.
* :mod:`.checkpoint` -- writing atomic checkpoints; :mod:`.checkpointer` owns all training state and resume.
* :mod:`.run_dir`    -- where a run directory keeps its complete checkpoints (read by writer and loader).
* :mod:`.loading`    -- :func:`~.loading.load_trained` / :func:`load_model`: open a trained model (run, checkpoint, hub).
* :mod:`.schedule`   -- warmup + cosine learning rate.
* :mod:`.metrics`    -- ``metrics.jsonl``, TensorBoard, model FLOPs per token and MFU.
* :mod:`.distributed` -- torchrun: process group, DDP / FSDP2 helpers, rank-0-only work.
* :mod:`.scoring`    -- the validation loss (nats, bits per byte) shared with ``xforget-eval``.

The command is :mod:`xforget.commands.train`.
"""

from typing import TYPE_CHECKING

from xforget.lazy import lazy_attributes

# Loaded on first use, so that `xforget.train.config` (the command lines' schema) imports without torch.
__getattr__, __dir__ = lazy_attributes(__name__, {
    "CheckpointError": "xforget.train.run_dir", "ConfigError": "xforget.errors",
    "TrainConfig": "xforget.train.config", "compose_config": "xforget.train.config",
    "to_train_config": "xforget.train.config", "load_model": "xforget.train.loading",
    "TrainingError": "xforget.train.loop", "TrainResult": "xforget.train.loop", "train": "xforget.train.loop",
})

if TYPE_CHECKING:
    from xforget.errors import ConfigError
    from xforget.train.config import TrainConfig, compose_config, to_train_config
    from xforget.train.loading import load_model
    from xforget.train.loop import TrainingError, TrainResult, train
    from xforget.train.run_dir import CheckpointError

__all__ = [
    "CheckpointError", "ConfigError", "TrainConfig", "TrainResult", "TrainingError",
    "compose_config", "load_model", "to_train_config", "train",
]
