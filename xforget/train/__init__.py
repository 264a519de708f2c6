"""Training: ``xforget-train`` / ``python -m xforget.train`` (Hydra CLI) and its pieces.

* :mod:`.config`     -- typed config dataclasses (Hydra ConfigStore schema), validation, error messages.
* :mod:`.loop`       -- :func:`train`, the loop, top to bottom.
* :mod:`.checkpoint` -- atomic checkpoints and resume.
* :mod:`.loading`    -- :func:`~.loading.load_trained` / :func:`load_model`: open a trained model (run, checkpoint, hub).
* :mod:`.schedule`   -- warmup + cosine learning rate.
* :mod:`.metrics`    -- ``metrics.jsonl``, TensorBoard, model FLOPs per token and MFU.
* :mod:`.distributed` -- torchrun: process group, DDP / FSDP2 helpers, rank-0-only work.
* :mod:`.cli`        -- the Hydra entry point :func:`main`.
"""

from xforget.train import checkpoint as _checkpoint
from xforget.train.checkpoint import CheckpointError
from xforget.train.config import ConfigError, TrainConfig, compose_config, to_train_config
from xforget.train.loading import load_model
from xforget.train.loop import TrainingError, TrainResult, train

# ``from xforget.train.checkpoint import load_model`` (the README's import) keeps working: loading.py reads
# checkpoints, so checkpoint.py cannot import it back (a circle); the name is attached here, where both are
# imported (any import of xforget.train.checkpoint runs this file first).
_checkpoint.load_model = load_model

__all__ = [
    "CheckpointError", "ConfigError", "TrainConfig", "TrainResult", "TrainingError",
    "compose_config", "load_model", "to_train_config", "train",
]
