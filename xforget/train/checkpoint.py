"""Atomic checkpoints in a run directory, resume, and loading a trained model.

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
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from xforget.models.wrapper import build_model
from xforget.files import apply_umask
from xforget.models.wrapper import TransformerWrapper
from xforget.errors import ConfigError
from xforget.train.config import TrainConfig, config_to_yaml, load_config_yaml

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")
INIT_FROM_ACCEPTS = ("expected a run directory (with checkpoints/step_*/ or model.safetensors), a checkpoint "
                     "directory (checkpoints/step_*/) or a .safetensors file")


class CheckpointError(RuntimeError):
    """Unusable checkpoint or run directory; the message is one line for the user."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


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
        raise CheckpointError(f"corrupt checkpoint {path}: cannot read config.yaml ({_short(exc)})") from None
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
        raise CheckpointError(f"corrupt checkpoint {path}: model.safetensors ({_short(exc)}); "
                              "delete that directory to resume from an older one") from None
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: state.pt ({_short(exc)}); "
                              "delete that directory to resume from an older one") from None
    return state


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def save_final_model(run_dir: str | Path, model: nn.Module) -> Path:
    """``run_dir/model.safetensors`` (atomic)."""
    path = Path(run_dir) / "model.safetensors"
    tmp = path.with_name(f".model.safetensors.{os.getpid()}.tmp")
    st_save_model(model, str(tmp))
    apply_umask(tmp)  # safetensors creates 0600 files
    _fsync_file(tmp)
    os.replace(tmp, path)
    return path


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[TransformerWrapper, TrainConfig]:
    """A trained model from a run directory (or one checkpoint directory), in eval mode.

    Uses the latest complete checkpoint; without one, ``run_dir/model.safetensors``
    with ``run_dir/config.yaml``.

    Raises:
        CheckpointError: nothing loadable there.
    """
    run_dir = Path(run_dir)
    if (run_dir / MARKER).is_file():
        source = run_dir
    else:
        source = latest_checkpoint(run_dir)
        if source is None:
            if not (run_dir / "model.safetensors").is_file() or not (run_dir / "config.yaml").is_file():
                raise CheckpointError(f"no trained model in {run_dir}: expected checkpoints/step_*/ "
                                      "or model.safetensors + config.yaml")
            source = run_dir
    try:
        cfg = load_config_yaml(source / "config.yaml")
    except Exception as exc:
        raise CheckpointError(f"cannot read {source / 'config.yaml'} ({_short(exc)})") from None
    model = build_model(cfg.model)
    try:
        st_load_model(model, str(source / "model.safetensors"), strict=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load {source / 'model.safetensors'} ({_short(exc)})") from None
    return model.to(device).eval(), cfg


def load_run_tokenizer(run_dir: str | Path, cfg: TrainConfig | None = None):
    """The tokenizer a run was trained with: ``tokenizer.json`` in the run directory (training copies it
    there), else the one of its prepared dataset (``data=tokens``), else bytes.

    ``run_dir`` may be one checkpoint directory (``checkpoints/step_*``): its run directory is used.

    Raises:
        DataError: a ``tokenizer.json`` that cannot be read.
    """
    from xforget.data.tokenizer import TOKENIZER_FILE, load_tokenizer

    root = Path(run_dir)
    if (root / MARKER).is_file() and root.parent.name == CHECKPOINTS:
        root = root.parent.parent
    if (root / TOKENIZER_FILE).is_file():
        return load_tokenizer(root)
    if cfg is not None and cfg.data.name == "tokens" and cfg.data.path and Path(cfg.data.path).is_dir():
        return load_tokenizer(cfg.data.path)
    return load_tokenizer(root)  # no tokenizer.json: bytes


def init_weights_file(source: str | Path) -> Path:
    """The ``model.safetensors`` that ``trainer.init_from=source`` names.

    ``source``: a run directory (its latest complete checkpoint, else its final
    ``model.safetensors``), one checkpoint directory, or a ``.safetensors`` file; ``~`` is expanded.

    Raises:
        CheckpointError: nothing loadable there.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"trainer.init_from={source}: no such file or directory; {INIT_FROM_ACCEPTS}")
    if path.is_file():
        return path
    if (path / MARKER).is_file():
        return path / "model.safetensors"
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / "model.safetensors"
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    raise CheckpointError(f"trainer.init_from={source}: no weights there; {INIT_FROM_ACCEPTS}")


def check_init_from(source: str | Path | None, run_dir: str | Path | None = None) -> None:
    """``trainer.init_from`` checked before anything is written or loaded (like a missing data file).

    Nothing to check without ``source``, or when ``run_dir`` already holds a complete checkpoint
    (that run resumes from its own checkpoint and does not read ``source``).

    Raises:
        ConfigError: ``source`` does not exist or holds no weights (one line naming the path and
            what is accepted: a run directory, a checkpoint directory, a ``.safetensors`` file).
    """
    if not source or (run_dir is not None and latest_checkpoint(run_dir) is not None):
        return
    try:
        init_weights_file(source)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None


def load_init_weights(source: str | Path, model: nn.Module, model_cfg=None) -> Path:
    """Load ``trainer.init_from`` weights into ``model`` (weights only); returns the file read.

    Raises:
        CheckpointError: no weights at ``source``, or tensors whose names or shapes do not fit
            ``model`` (the first few mismatches are named, with both shapes).
    """
    from safetensors import safe_open

    file = init_weights_file(source)
    try:
        with safe_open(str(file), framework="pt") as f:
            theirs = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"trainer.init_from={source}: cannot read {file} ({_short(exc)})") from None
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"{k} {theirs[k]} there, {ours[k]} here" for k in ours if k in theirs and theirs[k] != ours[k]]
    problems += [f"{k} not in this model" for k in theirs if k not in ours]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"trainer.init_from={source}: the weights in {file} do not fit this model: "
                              f"{'; '.join(problems[:3])}{more}; use the same model.* settings as that run"
                              f"{_model_diff(file.parent / 'config.yaml', model_cfg)}")
    try:
        st_load_model(model, str(file), strict=True)  # tied weights are stored once: names checked here
    except Exception as exc:
        raise CheckpointError(f"trainer.init_from={source}: the weights in {file} do not fit this model "
                              f"({_short(exc)}); use the same model.* settings as that run") from None
    return file


def _model_diff(config_path: Path, model_cfg) -> str:
    """`` (model.dim: 32 there, 48 here)`` when ``config_path`` is readable and differs, else ''."""
    if model_cfg is None or not config_path.is_file():
        return ""
    try:
        saved = asdict(load_config_yaml(config_path).model)
    except Exception:
        return ""
    diff = [f"model.{k}: {v!r} there, {getattr(model_cfg, k)!r} here" for k, v in saved.items()
            if v != getattr(model_cfg, k, v)]
    return f" ({', '.join(diff)})" if diff else ""
