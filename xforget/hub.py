"""Hugging Face-style model directories (``huggingface_hub``'s ``PyTorchModelHubMixin``).

A directory holds::

    config.json          the ModelConfig (xforget.config), as JSON
    model.safetensors    the weights (tied weights stored once)
    README.md            model card written by huggingface_hub
    tokenizer.json ...   the tokenizer's own files, when the model was trained on one (else bytes)

``TransformerWrapper.save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` come from
the mixin; this module holds what they call: writing the weights, rebuilding a model from
``config.json`` and refusing weights that do not fit it, the tokenizer, and
:func:`load_pretrained`, which opens either such a directory or a training run directory.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _model_config_keys() -> set[str]:
    from .config import ModelConfig

    return {f.name for f in fields(ModelConfig)}


def check_saveable(model) -> None:
    """Raises ValueError unless ``model`` carries a full ModelConfig (built by ``build_model``)."""
    config = getattr(model, "_hub_mixin_config", None)
    if not isinstance(config, dict) or not _model_config_keys() <= set(config):
        raise ValueError("save_pretrained needs a model built from a ModelConfig (xforget.build_model(...), "
                         "TransformerWrapper.from_pretrained or a run directory); this one was assembled from "
                         "layers by hand, so there is no config.json to write")


def save_weights(model, directory: Path) -> None:
    """``directory/model.safetensors``, written to a temporary name and renamed (atomic)."""
    import os

    from safetensors.torch import save_model

    tmp = directory / f".{WEIGHTS}.{os.getpid()}.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, directory / WEIGHTS)


def save_tokenizer(tokenizer, directory: Path) -> None:
    """The tokenizer's files in ``directory`` (``Tokenizer.save``); byte-level tokenizers write what they write."""
    tokenizer.save(directory)


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in a hub-style directory (bytes when none).

    Delegates to :func:`xforget.data.tokenizer.load_tokenizer`.
    """
    from .data.tokenizer import load_tokenizer as load

    return load(Path(directory))


def check_weights_fit(model: torch.nn.Module, weights_file: str | Path, config_source: str) -> None:
    """Refuse weights that do not fit the model built from ``config.json``.

    Raises:
        ValueError: one line naming the first mismatches (missing / unexpected tensors, shapes).
    """
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(weights_file), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    # tied weights are stored once (safetensors drops the alias); accept a missing alias of a stored tensor
    aliases = _aliases(model)
    missing = [k for k in expected if k not in stored and not any(a in stored for a in aliases.get(k, ()))]
    unexpected = [k for k in stored if k not in expected]
    shapes = [f"{k}: config gives {expected[k]}, weights have {stored[k]}"
              for k in stored if k in expected and expected[k] != stored[k]]
    problems = []
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    if missing:
        problems.append(f"tensors missing from the weights {missing[:4]}" + (" ..." if len(missing) > 4 else ""))
    if unexpected:
        problems.append(f"tensors the config has no place for {unexpected[:4]}"
                        + (" ..." if len(unexpected) > 4 else ""))
    if problems:
        raise ValueError(f"{config_source} does not match {weights_file}: {'; '.join(problems)}; "
                         "the config.json must be the one saved with these weights")


def _aliases(model: torch.nn.Module) -> dict[str, list[str]]:
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(id(tensor), []).append(name)
    return {n: [m for m in names if m != n] for names in by_ptr.values() for n in names}


def build_from_pretrained(model_id: str, model_kwargs: dict[str, Any], *, map_location: str = "cpu",
                          revision=None, cache_dir=None, force_download=False, local_files_only=False, token=None):
    """The mixin's ``_from_pretrained``: ModelConfig from ``config.json`` (already read into
    ``model_kwargs``), then the weights, checked against it.

    Raises:
        ValueError: no config.json, unknown config keys, or weights that do not fit the config.
    """
    from safetensors.torch import load_model

    from .config import build_model, model_config_from_dict

    if not model_kwargs:
        raise ValueError(f"{model_id}: no {CONFIG} found; a hub-style xforget directory holds {CONFIG} + {WEIGHTS}")
    try:
        cfg = model_config_from_dict(model_kwargs)
        model = build_model(cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{model_id}/{CONFIG}: {' '.join(str(exc).split())}") from None
    if Path(model_id).is_dir():
        weights = Path(model_id) / WEIGHTS
        if not weights.is_file():
            raise ValueError(f"{model_id}: {WEIGHTS} is missing")
    else:
        from huggingface_hub import hf_hub_download

        weights = Path(hf_hub_download(repo_id=model_id, filename=WEIGHTS, revision=revision, cache_dir=cache_dir,
                                       force_download=force_download, token=token,
                                       local_files_only=local_files_only))
    check_weights_fit(model, weights, f"{model_id}/{CONFIG}")
    load_model(model, str(weights), strict=True, device=str(map_location))
    return model.to(map_location).eval()


def is_hub_directory(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def load_pretrained(path: str | Path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from a hub-style directory or a training run directory (its latest checkpoint).

    Raises:
        ValueError: a hub-style directory whose config does not fit its weights.
        xforget.train.checkpoint.CheckpointError: nothing loadable in a run directory.
    """
    from .wrapper import TransformerWrapper

    if not Path(path).exists() and str(path).count("/") == 1:  # a hub repo id: fetch (or reuse) its files
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id=str(path))
    path = Path(path)
    if is_hub_directory(path) and not (path / "config.yaml").is_file():
        model = TransformerWrapper.from_pretrained(str(path), map_location=str(device))
        return model, load_tokenizer(path)
    from .train.checkpoint import load_model, load_run_tokenizer

    model, cfg = load_model(path, device)
    return model, load_run_tokenizer(path, cfg)


def export_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> tuple[Path, list[str]]:
    """A run directory's latest weights as a hub-style directory (``xforget-export``).

    Everything is written into ``.<out>.tmp-<pid>/`` beside ``out`` and renamed into place, so ``out``
    is either absent/untouched or complete. An existing ``out`` that is not empty is refused unless
    ``overwrite``; ``out`` may not be the run directory or hold it.

    Returns:
        ``(out, files)``: the directory and every file written into it (relative paths, sorted).
    Raises:
        CheckpointError: nothing loadable in ``run_dir``.
        ValueError: ``out`` exists and is not empty (without ``overwrite``), is a file, or is/holds ``run_dir``.
    """
    import os
    import shutil

    source, target = Path(run_dir).expanduser().resolve(), Path(out).expanduser().resolve()
    if target == source or target in source.parents:
        raise ValueError(f"out={out} is the run directory or holds it ({source}); choose another directory")
    if target.exists() and not target.is_dir():
        raise ValueError(f"out={out} exists and is not a directory; choose another path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"out={out} already exists and is not empty; choose another directory or add "
                         "overwrite=true (replaces it)")
    model, tokenizer = load_pretrained(source)  # before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, tokenizer=tokenizer)
        files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
        if target.exists():
            os.replace(target, old)  # then the complete export takes its place
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target, files
