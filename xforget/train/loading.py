"""Open a trained model in any of its forms: a training run directory, one checkpoint directory, a
hub-style directory (``config.json`` + ``model.safetensors``) or a hub repo id.

:func:`load_trained` is the one entry point: ``xforget-eval``, ``xforget-generate``,
``xforget-export`` and the lm-evaluation-harness model all open their model with it.
``TransformerWrapper.from_pretrained`` (:mod:`xforget.models.pretrained`) stays the reader of the
hub format; this module calls it for hub directories. ``trainer.init_from`` (start a run from the
weights of another) finds its weights here too.

Which weights a directory holds, in order:

* a checkpoint directory (``COMPLETE`` marker): its ``model.safetensors`` and ``config.yaml``;
* a run directory: its latest complete checkpoint, else its final ``model.safetensors`` with
  ``config.yaml``;
* a hub-style directory (``config.json`` + ``model.safetensors``, no ``config.yaml``).

Every failure is a :class:`~xforget.train.checkpoint.CheckpointError` whose message is one line
starting ``no trained model in PATH`` (a missing path: ``... : it does not exist``) or naming the file
that could not be read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from safetensors.torch import load_model as load_weights
from torch import nn

from xforget.data.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer
from xforget.errors import ConfigError
from xforget.models.config import ModelConfig
from xforget.models.pretrained import WEIGHTS, is_hub_directory, read_model_config
from xforget.models.wrapper import TransformerWrapper, build_model
from xforget.train.run_dir import (
    CHECKPOINTS,
    INIT_FROM_ACCEPTS,
    MARKER,
    CheckpointError,
    complete_checkpoints,
    latest_checkpoint,
    missing_init_from,
    missing_model_path,
    short_error,
    weights_step,
)
from xforget.train.config import TrainConfig, load_config_yaml

RUN, CHECKPOINT, HUB = "run", "checkpoint", "hub"  # TrainedModel.kind
RUN_CONFIG = "config.yaml"
EXPECTED = ("expected checkpoints/step_*/ or model.safetensors + config.yaml (a run), or config.json + "
            "model.safetensors (a hub-style directory)")


@dataclass
class TrainedModel:
    """A trained model opened by :func:`load_trained`.

    Attributes:
        model: the network, in eval mode, on the device asked for.
        tokenizer: the tokenizer it was trained with (bytes when none was saved).
        train_config: the run's resolved training config; None for a hub-style directory.
        model_config: the model's config (``train_config.model`` for a run).
        kind: ``"run"``, ``"checkpoint"`` or ``"hub"``.
        step: the training step of the checkpoint read; None for final weights and hub directories.
        path: the local directory read (for a hub repo id, its downloaded snapshot).
    """

    model: TransformerWrapper
    tokenizer: Tokenizer
    train_config: TrainConfig | None
    model_config: ModelConfig
    kind: str
    step: int | None
    path: Path


@dataclass(frozen=True)
class _Weights:
    """Where the weights of a run or checkpoint directory are: ``directory/model.safetensors``."""

    kind: str
    directory: Path
    step: int | None


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The trained model at ``path``: a run directory, one checkpoint directory, a hub-style directory
    or a hub repo id (``owner/name``, fetched or reused from the Hugging Face cache when no such local path
    exists). ``~`` is expanded.

    Raises:
        CheckpointError: one line: the path does not exist, holds no trained model, or its config or
            weights cannot be read or do not fit each other.
        DataError: a ``tokenizer.json`` that cannot be read.
    """
    directory = _local_directory(path)
    if is_hub_directory(directory) and not (directory / RUN_CONFIG).is_file():
        return _load_hub(directory, device)
    found = _find_weights(directory, with_config=True)
    if found is None:
        raise CheckpointError(f"no trained model in {path}: {EXPECTED}")
    config_file = found.directory / RUN_CONFIG
    try:
        cfg = load_config_yaml(config_file)
    except Exception as exc:
        raise CheckpointError(f"cannot read {config_file} ({short_error(exc)})") from None
    model = build_model(cfg.model)
    weights = found.directory / WEIGHTS
    try:
        load_weights(model, str(weights), strict=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load {weights} ({short_error(exc)})") from None
    return TrainedModel(model=model.to(device).eval(), tokenizer=_run_tokenizer(directory, cfg), train_config=cfg,
                        model_config=cfg.model, kind=found.kind, step=found.step, path=directory)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[TransformerWrapper, TrainConfig]:
    """``(model, train config)`` of a run or checkpoint directory (:func:`load_trained`), model in eval mode.

    Also importable as ``xforget.train.checkpoint.load_model`` (its documented home).

    Raises:
        CheckpointError: nothing loadable there, or a hub-style directory (it records no training config).
    """
    loaded = load_trained(run_dir, device)
    if loaded.train_config is None:
        raise CheckpointError(f"{run_dir} is a hub-style directory, which records no training config; "
                              "open it with xforget.train.loading.load_trained")
    return loaded.model, loaded.train_config


def _local_directory(path: str | Path) -> Path:
    """``path`` on this machine; a hub repo id without such a local path is downloaded first."""
    local = Path(path).expanduser()
    if local.exists():
        return local
    missing = missing_model_path(path)  # a mistyped local directory rather than a hub repo id
    if missing is not None:
        raise CheckpointError(missing)
    try:  # owner/name: a hub repo id (fetched once, then reused from the Hugging Face cache)
        return Path(snapshot_download(repo_id=str(path)))
    except Exception as exc:
        raise CheckpointError(f"no trained model in {path}: it does not exist (nor could it be fetched as a hub "
                              f"repo id: {short_error(exc)})") from None


def _load_hub(directory: Path, device: str | torch.device) -> TrainedModel:
    try:
        model = TransformerWrapper.from_pretrained(str(directory), map_location=str(device))
        model_config = read_model_config(directory)
    except (OSError, ValueError) as exc:
        raise CheckpointError(" ".join(str(exc).split())) from None
    return TrainedModel(model=model, tokenizer=load_tokenizer(directory), train_config=None,
                        model_config=model_config, kind=HUB, step=None, path=directory)


def _find_weights(directory: Path, *, with_config: bool) -> _Weights | None:
    """The weights of a checkpoint directory, else a run's latest complete checkpoint, else its final
    ``model.safetensors`` (only with ``config.yaml`` beside it when ``with_config``); None when there are none."""
    if (directory / MARKER).is_file():
        return _Weights(CHECKPOINT, directory, weights_step(directory))
    found = complete_checkpoints(directory)
    if found:
        step, latest = found[-1]
        return _Weights(RUN, latest, step)
    if (directory / WEIGHTS).is_file() and (not with_config or (directory / RUN_CONFIG).is_file()):
        return _Weights(RUN, directory, None)
    return None


def _run_tokenizer(run_dir: Path, cfg: TrainConfig) -> Tokenizer:
    """The tokenizer a run was trained with: ``tokenizer.json`` in the run directory (training copies it
    there), else the one of its prepared dataset (``data=tokens``), else bytes.

    ``run_dir`` may be one checkpoint directory (``checkpoints/step_*``): its run directory is used.

    Raises:
        DataError: a ``tokenizer.json`` that cannot be read.
    """
    root = run_dir
    if (root / MARKER).is_file() and root.parent.name == CHECKPOINTS:
        root = root.parent.parent
    if (root / TOKENIZER_FILE).is_file():
        return load_tokenizer(root)
    if cfg.data.name == "tokens" and cfg.data.path and Path(cfg.data.path).is_dir():
        return load_tokenizer(cfg.data.path)
    return load_tokenizer(root)  # no tokenizer.json: bytes


# ----------------------------------------------------------------------------- trainer.init_from



def load_run_tokenizer(run_dir: str | Path, cfg: TrainConfig | None = None) -> Tokenizer:
    """The tokenizer a run was trained with (``cfg``: its TrainConfig; None reads ``run_dir/config.yaml``).

    Raises:
        CheckpointError: no config.yaml to read.
    """
    run_dir = Path(run_dir)
    if cfg is None:
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir}: no config.yaml, so no record of the run's tokenizer")
        cfg = load_config_yaml(run_dir / "config.yaml")
    return _run_tokenizer(run_dir, cfg)


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> tuple[TransformerWrapper, Tokenizer]:
    """``(model, tokenizer)`` of any trained model (:func:`load_trained`, kept under its old name)."""
    trained = load_trained(path, device)
    return trained.model, trained.tokenizer

def init_weights_file(source: str | Path) -> Path:
    """The ``model.safetensors`` that ``trainer.init_from=source`` names.

    ``source``: a run directory (its latest complete checkpoint, else its final
    ``model.safetensors``), one checkpoint directory, or a ``.safetensors`` file; ``~`` is expanded.

    Raises:
        CheckpointError: nothing loadable there.
    """
    path = Path(source).expanduser()
    missing = missing_init_from(source)
    if missing is not None:
        raise CheckpointError(missing)
    if path.is_file():
        return path
    found = _find_weights(path, with_config=False)
    if found is None:
        raise CheckpointError(f"trainer.init_from={source}: no weights there; {INIT_FROM_ACCEPTS}")
    return found.directory / WEIGHTS


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
    file = init_weights_file(source)
    try:
        with safe_open(str(file), framework="pt") as f:
            theirs = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"trainer.init_from={source}: cannot read {file} ({short_error(exc)})") from None
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"{k} {theirs[k]} there, {ours[k]} here" for k in ours if k in theirs and theirs[k] != ours[k]]
    problems += [f"{k} not in this model" for k in theirs if k not in ours]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"trainer.init_from={source}: the weights in {file} do not fit this model: "
                              f"{'; '.join(problems[:3])}{more}; use the same model.* settings as that run"
                              f"{_model_diff(file.parent / RUN_CONFIG, model_cfg)}")
    try:
        load_weights(model, str(file), strict=True)  # tied weights are stored once: names checked here
    except Exception as exc:
        raise CheckpointError(f"trainer.init_from={source}: the weights in {file} do not fit this model "
                              f"({short_error(exc)}); use the same model.* settings as that run") from None
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
