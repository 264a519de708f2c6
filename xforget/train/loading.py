"""Open a trained model in any of its forms: a training run directory, one checkpoint, a hub-style
directory (``config.json`` + ``model.safetensors``) or a hub repo id.

Every consumer of a trained model (``xforget-eval``, ``xforget-generate``, ``xforget-export``, the
lm-evaluation-harness model) opens it here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from xforget.data.tokenizer import load_tokenizer as load
from xforget.models.pretrained import is_hub_directory
from xforget.models.wrapper import TransformerWrapper
from xforget.train.checkpoint import load_model, load_run_tokenizer

def load_tokenizer(directory: str | Path):
    """The tokenizer saved in a hub-style directory (bytes when none).

    Delegates to :func:`xforget.data.tokenizer.load_tokenizer`.
    """
    return load(Path(directory))


def load_pretrained(path: str | Path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from a hub-style directory or a training run directory (its latest checkpoint).

    Raises:
        ValueError: a hub-style directory whose config does not fit its weights.
        xforget.train.checkpoint.CheckpointError: nothing loadable in a run directory.
    """
    if not Path(path).exists() and str(path).count("/") == 1:  # a hub repo id: fetch (or reuse) its files
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id=str(path))
    path = Path(path)
    if is_hub_directory(path) and not (path / "config.yaml").is_file():
        model = TransformerWrapper.from_pretrained(str(path), map_location=str(device))
        return model, load_tokenizer(path)
    model, cfg = load_model(path, device)
    return model, load_run_tokenizer(path, cfg)
