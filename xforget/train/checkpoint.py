"""Atomic checkpoints in a run directory and resume (opening a trained model: :mod:`xforget.train.loading`).

Layout of a run directory::

    config.yaml                     resolved config (written at start)
    metrics.jsonl, train.log
    model.safetensors               final weights (written at the end)
    checkpoints/step_0000500/       one complete checkpoint
        model.safetensors           weights (safetensors)
        state.pt                    optimizer, scheduler, grad scaler, step, RNG states
        config.yaml                 resolved config
        COMPLETE                    written last

A checkpoint is written into ``checkpoints/.tmp-step_XXXXXXX-<pid>/`` (files
fsynced, ``COMPLETE`` last) and then renamed into place with ``os.replace``, so
a process killed at any moment leaves either the old set of complete
checkpoints or the new one. Directories without ``COMPLETE`` are never loaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from xforget.files import apply_umask
from xforget.train.config import TrainConfig, config_to_yaml, load_config_yaml
from xforget.train.loading import (  # noqa: F401  (names this module had before loading.py; the README's load_model)
    INIT_FROM_ACCEPTS,
    check_init_from,
    init_weights_file,
    load_init_weights,
    load_model,
    load_run_tokenizer,
)
from xforget.train.run_dir import (  # noqa: F401  (re-exported: the names this module has always had)
    CHECKPOINTS,
    MARKER,
    CheckpointError,
    complete_checkpoints,
    latest_checkpoint,
    short_error,
    step_dir_name,
)

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module, state: dict[str, Any], cfg: TrainConfig) -> Path:
    """Write ``checkpoints/step_<step>/`` atomically; returns its path."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    st_save_model(model, str(tmp / "model.safetensors"))
    torch.save({**state, "step": step}, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_to_yaml(cfg))
    for name in ("model.safetensors", "state.pt", "config.yaml"):
        apply_umask(tmp / name)  # safetensors creates 0600 files
        _fsync_file(tmp / name)
    (tmp / MARKER).write_text(json.dumps({"step": step}) + "\n")
    _fsync_file(tmp / MARKER)
    _fsync_dir(tmp)
    if final.exists():  # e.g. an incomplete leftover with the same name: move it aside first
        trash = root / f".trash-{step_dir_name(step)}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Delete leftovers of interrupted writes (``.tmp-*``/``.trash-*``); returns what was removed."""
    root = Path(run_dir) / CHECKPOINTS
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints (0 = keep all)."""
    if keep_last <= 0:
        return
    for _, path in complete_checkpoints(run_dir)[:-keep_last]:
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
        os.replace(path, trash)  # atomically no longer a checkpoint, then delete
        shutil.rmtree(trash, ignore_errors=True)


def check_same_model(path: Path, cfg: TrainConfig) -> TrainConfig:
    """The checkpoint's config; raises if its model differs from ``cfg.model``."""
    try:
        saved = load_config_yaml(path / "config.yaml")
    except Exception as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot read config.yaml ({short_error(exc)})") from None
    if asdict(saved.model) != asdict(cfg.model):
        diff = {k: (v, getattr(cfg.model, k)) for k, v in asdict(saved.model).items() if v != getattr(cfg.model, k)}
        shown = ", ".join(f"model.{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())
        raise CheckpointError(
            f"run directory {path.parent.parent} holds a checkpoint of a different model ({shown}); "
            "use another hydra.run.dir or the original model config"
        )
    return saved


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the training state (step, optimizer, ...).

    Raises:
        CheckpointError: unreadable or mismatched files, naming the checkpoint.
    """
    try:
        st_load_model(model, str(path / "model.safetensors"), strict=True)
    except Exception as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: model.safetensors ({short_error(exc)}); "
                              "delete that directory to resume from an older one") from None
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: state.pt ({short_error(exc)}); "
                              "delete that directory to resume from an older one") from None
    return state


def save_final_model(run_dir: str | Path, model: nn.Module) -> Path:
    """``run_dir/model.safetensors`` (atomic)."""
    path = Path(run_dir) / "model.safetensors"
    tmp = path.with_name(f".model.safetensors.{os.getpid()}.tmp")
    st_save_model(model, str(tmp))
    apply_umask(tmp)  # safetensors creates 0600 files
    _fsync_file(tmp)
    os.replace(tmp, path)
    return path
