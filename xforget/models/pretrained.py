"""Hugging Face-style model directories (``huggingface_hub``'s ``PyTorchModelHubMixin``).

A directory holds::

    config.json          the ModelConfig (xforget.models.config), as JSON
    model.safetensors    the weights (tied weights stored once)
    README.md            model card written by huggingface_hub
    tokenizer.json ...   the tokenizer's own files, when the model was trained on one (else bytes)

``TransformerWrapper.save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` come from
the mixin; this module holds what they call: writing the weights, rebuilding a model from
``config.json`` and refusing weights that do not fit it, the tokenizer, and
nothing else: opening any form of a trained model (this format, a run directory, one checkpoint)
is :func:`xforget.train.loading.load_trained`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from xforget.files import atomic_path
from xforget.models.config import ModelConfig, model_config_from_dict

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _model_config_keys() -> set[str]:
    return {f.name for f in fields(ModelConfig)}


def check_saveable(model) -> None:
    """Raises ValueError unless ``model`` carries a full ModelConfig (built by ``build_model``)."""
    config = getattr(model, "_hub_mixin_config", None)
    if not isinstance(config, dict) or not _model_config_keys() <= set(config):
        raise ValueError("save_pretrained needs a model built from a ModelConfig (xforget.build_model(...), "
                         "TransformerWrapper.from_pretrained or a run directory); this one was assembled from "
                         "layers by hand, so there is no config.json to write")


def save_weights(model, directory: Path) -> None:
    """``directory/model.safetensors``, written to a temporary name and renamed (atomic, the umask's mode)."""
    with atomic_path(directory / WEIGHTS) as tmp:
        save_model(model, str(tmp))


def save_tokenizer(tokenizer, directory: Path) -> None:
    """The tokenizer's files in ``directory`` (``Tokenizer.save``); byte-level tokenizers write what they write."""
    tokenizer.save(directory)


def check_weights_fit(model: torch.nn.Module, weights_file: str | Path, config_source: str) -> None:
    """Refuse weights that do not fit the model built from ``config.json``.

    Raises:
        ValueError: one line naming the first mismatches (missing / unexpected tensors, shapes).
    """
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


def build_from_pretrained(model_cls, model_id: str, model_kwargs: dict[str, Any], *, map_location: str = "cpu",
                          revision=None, cache_dir=None, force_download=False, local_files_only=False, token=None):
    """The mixin's ``_from_pretrained``: ModelConfig from ``config.json`` (already read into
    ``model_kwargs``), then the weights, checked against it.

    Raises:
        ValueError: no config.json, unknown config keys, or weights that do not fit the config.
    """
    if not model_kwargs:
        raise ValueError(f"{model_id}: no {CONFIG} found; a hub-style xforget directory holds {CONFIG} + {WEIGHTS}")
    try:
        cfg = model_config_from_dict(model_kwargs)
        model = model_cls.from_config(cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{model_id}/{CONFIG}: {' '.join(str(exc).split())}") from None
    if Path(model_id).is_dir():
        weights = Path(model_id) / WEIGHTS
        if not weights.is_file():
            raise ValueError(f"{model_id}: {WEIGHTS} is missing")
    else:
        weights = Path(hf_hub_download(repo_id=model_id, filename=WEIGHTS, revision=revision, cache_dir=cache_dir,
                                       force_download=force_download, token=token,
                                       local_files_only=local_files_only))
    check_weights_fit(model, weights, f"{model_id}/{CONFIG}")
    load_model(model, str(weights), strict=True, device=str(map_location))
    return model.to(map_location).eval()


def is_hub_directory(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def read_model_config(directory: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` in ``directory/config.json``.

    Raises:
        OSError: no readable file; ValueError: not JSON, or keys that are no ModelConfig field.
    """
    return model_config_from_dict(json.loads((Path(directory) / CONFIG).read_text()))
