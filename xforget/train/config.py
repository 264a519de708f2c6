"""Typed training configuration, registered with Hydra's ConfigStore.

``configs/train.yaml`` starts its defaults list with ``train_schema`` (the
:class:`TrainConfig` dataclass below), so every group file (``model/``,
``data/``, ``optim/``, ``trainer/``) and every command-line override is merged
into a typed node: an unknown key or a value of the wrong type fails at
composition time. :func:`explain_config_error` turns those failures into one
line that names the bad key and lists the valid keys of its node.

This module imports no torch: the commands compose and check their command line with it first
(unknown keys, types, and every value but the model's, :func:`to_train_config` with
``model=False``), so a typo is one line in a fraction of a second. The model's values need the
registries of the model code; :func:`validate_model` imports them when it is called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from xforget.data.corpus import DataError
from xforget.data.prepare import read_meta
from xforget.errors import ConfigError, explain_error, schema_keys
from xforget.models.config import ModelConfig
from xforget.train.budget import parse_duration
from xforget.train.choices import COMPILE_CHOICES, DEVICES, PRECISIONS, compile_choice, device_choice, logger_names

DATASETS = ("stdlib", "text", "shakespeare", "mqar", "needle", "tokens")
SYNTHETIC = ("mqar", "needle")
STRATEGIES = ("ddp", "fsdp")
RESUME_MODES = ("auto", "allow_changes")
OPTIM_IMPLS = ("auto", "for_loop", "foreach", "fused")


@dataclass
class DataConfig:
    """The training corpus: a byte-level corpus (vocabulary 256) or a prepared dataset.

    ``name``: ``stdlib`` (this Python's standard library sources), ``text``
    (the file at ``path``), ``shakespeare`` (``path``, else downloaded into
    the cache), or a synthetic task generated from seed 0 (``mqar``: multi-query
    associative recall, ``needle``: needle retrieval; see
    :mod:`xforget.data.synthetic`). The last ``val_fraction`` of the bytes is the
    validation split. ``tokens``: the prepared dataset directory at ``path``
    (``xforget-prepare``; memory-mapped shards, its own split and vocabulary,
    ``val_fraction`` unused; see :mod:`xforget.data.tokens`). ``pack_documents``
    (tokens only): attention, positions and the KV-shift never cross an
    end-of-text token inside a window (:mod:`xforget.data.documents`).
    """

    name: str = "stdlib"
    path: str | None = None
    val_fraction: float = 0.05
    cache_dir: str | None = None  # default: $XFORGET_CACHE or ~/.cache/xforget
    num_bytes: int | None = None  # mqar/needle only: corpus size (default 2 MiB)
    example_len: int | None = None  # mqar/needle only: bytes per example (default 128)
    pack_documents: bool = False  # tokens only: windows carry document ids from the end-of-text token


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay to ``min_lr_ratio * lr``."""

    name: str = "adamw"
    lr: float = 1.5e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    min_lr_ratio: float = 0.1
    impl: str = "fused"  # auto (torch's choice) | for_loop | foreach | fused (one kernel for all parameters)


@dataclass
class TrainerConfig:
    """The loop. ``batch_size`` is the global micro-batch (split evenly over
    torchrun processes); one optimizer step sees ``batch_size * grad_accum``
    windows of ``seq_len`` + 1 bytes."""

    max_steps: int | None = None  # optimizer steps; None = as many as max_time fits (one of the two must be set)
    max_time: str | None = "10min"  # a time budget for training: 600, 90s, 10min, 1.5h (None = no limit); whichever ends first
    batch_size: int = 16
    seq_len: int = 256
    grad_accum: int = 1
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    warmup_steps: int = 100
    eval_every: int = 250  # 0 = only at the end
    eval_batches: int = 16
    log_every: int = 10
    checkpoint_every: int = 250  # 0 = only at the end
    keep_last: int = 2  # complete checkpoints kept; 0 = keep all
    threads: int | None = None  # torch.set_num_threads; None = torch's default
    precision: str = "auto"  # auto (bf16 on native-bf16 hardware, else fp32) | fp32 | bf16 | fp16 (autocast; grad scaler for fp16)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: str = "auto"  # auto (runs of >= 1000 steps with a compiler backend) | true | false: torch.compile the step
    strategy: str = "ddp"  # under torchrun: ddp (DistributedDataParallel) | fsdp (FSDP2 fully_shard)
    peak_flops: float | None = None  # peak FLOP/s of one device, for MFU; None = a known GPU's, else TFLOP/s only
    progress: bool = True  # tqdm progress bar, drawn only when stderr is a terminal
    sample_bytes: int = 200  # bytes generated at the end (0 = none)
    sample_temperature: float = 0.8
    resume: str = "auto"  # auto: resume from the run directory's checkpoint, refusing changed settings | allow_changes
    init_from: str | None = None  # a run directory, checkpoint directory or .safetensors file: its weights start a new run


@dataclass
class TrainConfig:
    # plain ModelConfig: every preset (configs/model/) starts from these; the default run picks fox_pro in train.yaml
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    logger: Any = "none"  # none | tensorboard | wandb | a list, e.g. [tensorboard,wandb] (metrics.jsonl is always written)


BYTE_VOCAB = 256


def resolve_data_vocab(cfg: TrainConfig) -> None:
    """``model.num_tokens`` from the data (in place); ``data=tokens``: also make ``data.path`` absolute.

    ``model.num_tokens`` null (the default of every preset) means "from the data": 256 for
    the byte corpora, the prepared dataset's ``meta.json`` ``vocab_size`` for ``data=tokens``.
    An explicit value must equal it (checked here for ``data=tokens``, by :func:`validate` for bytes).

    Raises:
        ConfigError: no path, no/unreadable meta.json, or an explicit ``model.num_tokens`` that differs
            from the prepared dataset's vocabulary (naming both numbers).
    """
    d, m = cfg.data, cfg.model
    if d.name != "tokens":
        if m.num_tokens is None:
            m.num_tokens = BYTE_VOCAB
        return
    if not d.path:
        raise ConfigError("data=tokens needs a prepared dataset directory: add data.path=DIR (made by xforget-prepare)")

    try:
        meta = read_meta(d.path)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    vocab = int(meta["vocab_size"])
    d.path = str(Path(d.path).expanduser().resolve())
    if m.num_tokens is None:  # from the data
        m.num_tokens = vocab
    elif m.num_tokens != vocab:
        raise ConfigError(f"invalid value model.num_tokens={m.num_tokens}: the prepared dataset {d.path} has a "
                          f"vocabulary of {vocab} (meta.json vocab_size); remove model.num_tokens (null takes it "
                          f"from meta.json) or set it to {vocab}")


def register_configs() -> None:
    """Register the schema (idempotent); ``configs/train.yaml`` lists ``train_schema`` first."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


register_configs()


def config_dir() -> Path:
    """The Hydra config directory: ``xforget/configs/`` in an installed wheel, else the
    repository's top-level ``configs/`` (a source checkout or an editable install).

    pyproject.toml maps ``configs/`` into the package as ``xforget.configs``, so the
    repository directory is the one source of both.

    Raises:
        ConfigError: neither holds ``train.yaml``; names the paths tried.
    """
    package = Path(__file__).resolve().parent.parent  # xforget/
    tried = [package / "configs", package.parent / "configs"]
    for path in tried:
        if (path / "train.yaml").is_file():
            return path
    raise ConfigError(f"config directory not found: no train.yaml in {' or '.join(map(str, tried))}; "
                      "reinstall xforget (pip install .)")


def user_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split Hydra's ``--config-dir DIR`` / ``-cd DIR`` / ``--config-dir=DIR`` out of ``argv``.

    Returns ``(other arguments, [hydra.searchpath=[file://DIR, ...]])``: the override that puts
    the user's directories on the search path of a compose call, as Hydra itself does for
    ``hydra.main`` (a preset ``DIR/model/mine.yaml`` is then ``model=mine``; an experiment
    ``DIR/experiment/x.yaml`` is ``experiment=x``).

    Raises:
        ConfigError: the flag without a directory, or a directory that does not exist.
    """
    rest, dirs = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{flag} needs a directory: {flag} DIR")
                value, i = argv[i + 1], i + 1
            path = Path(value).expanduser().resolve()
            if not path.is_dir():
                raise ConfigError(f"{flag} {value}: not a directory")
            dirs.append(path)
        else:
            rest.append(arg)
        i += 1
    return rest, ([f"hydra.searchpath=[{','.join('file://' + str(d) for d in dirs)}]"] if dirs else [])


def compose_config(overrides: list[str] | tuple[str, ...] = (), *, return_hydra_config: bool = False) -> DictConfig:
    """Compose ``configs/train.yaml`` with Hydra overrides, outside of a Hydra run (tests, notebooks).

    Raises:
        ConfigError: an unknown key, a bad value or a missing group option (see :func:`explain_config_error`).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
            return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra / OmegaConf composition errors
        raise ConfigError(explain_config_error(exc)) from exc

def compose_named(name: str, overrides: list[str], *, return_hydra_config: bool = False):
    """Compose ``configs/<name>.yaml`` with Hydra overrides (every schema registered)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=name):
        return compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def to_train_config(cfg: DictConfig | TrainConfig, *, model: bool = True) -> TrainConfig:
    """Typed dataclasses from a composed DictConfig (interpolations resolved), validated.

    ``model=False`` leaves out the checks of the model's values (:func:`validate_model`, which
    imports torch): the commands' first, light pass over their command line.

    Raises:
        ConfigError: one line naming the bad key or value.
    """
    if isinstance(cfg, TrainConfig):
        out = cfg
    else:
        check_keys(cfg)  # `+model.foo=1` (force-add) slips past struct mode
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), _without_hydra(cfg))
        out = OmegaConf.to_object(cfg)
    resolve_data_vocab(out)
    validate(out, model=model)
    return out


def _without_hydra(cfg: DictConfig) -> DictConfig:
    if "hydra" not in cfg:
        return cfg
    cfg = cfg.copy()
    with _open_struct(cfg):
        del cfg["hydra"]
    return cfg


class _open_struct:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg, self.flag = cfg, OmegaConf.is_struct(cfg)

    def __enter__(self):
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc):
        OmegaConf.set_struct(self.cfg, self.flag)


def config_to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_config_yaml(path: str | Path) -> TrainConfig:
    """Read a resolved ``config.yaml`` written by training (unknown keys fail)."""
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def validate(cfg: TrainConfig, *, model: bool = True) -> None:
    """Reject impossible values with one line naming the key (``model=False``: all but
    :func:`validate_model`, without importing torch).

    Raises:
        ConfigError: e.g. negative lr, zero batch size, unknown precision.
    """
    t, o, d, m = cfg.trainer, cfg.optim, cfg.data, cfg.model

    def need(ok: bool, key: str, rule: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"invalid value {key}={value!r}: must be {rule}")

    # numpy's generators (the data windows) refuse negative seeds mid-run; torch folds them: one rule, here
    need(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", "an integer >= 0", cfg.seed)
    need(o.name == "adamw", "optim.name", "'adamw'", o.name)
    need(math.isfinite(o.lr) and o.lr > 0, "optim.lr", "> 0", o.lr)
    need(o.weight_decay >= 0, "optim.weight_decay", ">= 0", o.weight_decay)
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "two numbers in [0, 1)", o.betas)
    need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "in [0, 1]", o.min_lr_ratio)
    need(o.eps > 0, "optim.eps", "> 0", o.eps)
    need(o.impl in OPTIM_IMPLS, "optim.impl", f"one of {list(OPTIM_IMPLS)}", o.impl)
    need(t.max_steps is None or t.max_steps >= 0, "trainer.max_steps", ">= 0 or null (with trainer.max_time)",
         t.max_steps)
    try:
        parse_duration(t.max_time)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if t.max_steps is None and t.max_time is None:
        raise ConfigError("trainer.max_steps and trainer.max_time are both null: set one of them (a step count, "
                          "or a time budget such as trainer.max_time=10min), or both (whichever ends first)")
    for key in ("batch_size", "seq_len", "grad_accum", "log_every"):
        need(getattr(t, key) >= 1, f"trainer.{key}", ">= 1", getattr(t, key))
    for key in ("warmup_steps", "eval_every", "checkpoint_every", "keep_last", "sample_bytes"):
        need(getattr(t, key) >= 0, f"trainer.{key}", ">= 0", getattr(t, key))
    need(t.eval_batches >= 1, "trainer.eval_batches", ">= 1", t.eval_batches)
    need(t.grad_clip >= 0, "trainer.grad_clip", ">= 0 (0 = off)", t.grad_clip)
    need(t.threads is None or t.threads >= 1, "trainer.threads", ">= 1 or null", t.threads)
    need(t.precision in PRECISIONS, "trainer.precision", f"one of {list(PRECISIONS)}", t.precision)
    need(device_choice(t.device), "trainer.device", DEVICES, t.device)
    need(compile_choice(t.compile) is not None, "trainer.compile", f"one of {list(COMPILE_CHOICES)}", t.compile)
    need(t.sample_temperature >= 0, "trainer.sample_temperature", ">= 0", t.sample_temperature)
    need(t.resume in RESUME_MODES, "trainer.resume", f"one of {list(RESUME_MODES)}", t.resume)
    need(t.strategy in STRATEGIES, "trainer.strategy", f"one of {list(STRATEGIES)}", t.strategy)
    need(t.peak_flops is None or (math.isfinite(t.peak_flops) and t.peak_flops > 0), "trainer.peak_flops",
         "> 0 (FLOP/s) or null", t.peak_flops)

    logger_names(cfg.logger)
    need(d.name in DATASETS, "data.name", f"one of {list(DATASETS)}", d.name)
    need(0 < d.val_fraction < 1, "data.val_fraction", "in (0, 1)", d.val_fraction)
    if d.name == "text" and not d.path:
        raise ConfigError("data=text needs a file: add data.path=FILE")
    if d.name == "tokens" and not d.path:
        raise ConfigError("data=tokens needs a prepared dataset directory: add data.path=DIR (made by xforget-prepare)")
    for key in ("num_bytes", "example_len"):
        value = getattr(d, key)
        if value is not None and d.name not in SYNTHETIC:
            raise ConfigError(f"data.{key} applies only to the synthetic data sets {list(SYNTHETIC)}, "
                              f"not data={d.name}; remove it")
    need(d.num_bytes is None or d.num_bytes >= 1, "data.num_bytes", ">= 1 or null", d.num_bytes)
    need(isinstance(m.num_memory_tokens, int) and m.num_memory_tokens >= 0, "model.num_memory_tokens", ">= 0",
         m.num_memory_tokens)
    # data.pack_documents with model.num_memory_tokens is fine: a decoder (the only kind trained here) shows the
    # memory to every document as if it stood right in front of it (TransformerWrapper.forward, document_ids)
    if d.pack_documents and d.name != "tokens":
        raise ConfigError(f"data.pack_documents=true needs a prepared dataset with an end-of-text token (data=tokens), "
                          f"not data={d.name}; set data.pack_documents=false")
    if d.name in SYNTHETIC and d.example_len is not None:
        from xforget.data.synthetic import min_length  # imports torch: only for the synthetic tasks

        need(d.example_len >= min_length(d.name), "data.example_len", f">= {min_length(d.name)} for {d.name}",
             d.example_len)
    for key in ("dim", "depth", "heads"):
        need(getattr(m, key) >= 1, f"model.{key}", ">= 1", getattr(m, key))
    if d.name != "tokens":
        need(m.num_tokens in (None, BYTE_VOCAB), "model.num_tokens",
             f"256 or null (data={d.name} is byte level, vocabulary 256)", m.num_tokens)
    else:
        need(m.num_tokens is None or m.num_tokens >= 1, "model.num_tokens",
             ">= 1 or null (null: taken from the prepared dataset's meta.json)", m.num_tokens)
    need(m.kind == "decoder", "model.kind", "'decoder' for language-model training", m.kind)
    if model:
        validate_model(m)


def check_data_files(d: DataConfig) -> None:
    """The files a data config names, before anything is loaded or written (no torch; the commands call
    it in their first pass, :func:`validate` does not: a config may name a file written later): ``data=text``'s
    file exists, is a file and is not empty (the reader, :func:`xforget.data.corpora.text.read_bytes`,
    says the same for what changes later); ``data=tokens``'s directory has a readable ``meta.json``.

    Raises:
        ConfigError: one line naming the path.
    """
    if d.name == "tokens" and d.path:
        try:
            read_meta(d.path)
        except DataError as exc:
            raise ConfigError(str(exc)) from None
    if d.name != "text" or not d.path:
        return
    p = Path(d.path).expanduser()
    if not p.exists():
        raise ConfigError(f"data file not found: {p.resolve()} (set data.path=FILE)")
    if p.is_dir():
        raise ConfigError(f"data file is a directory, not a file: {p.resolve()} (data=text reads one file; a "
                          "directory of files: xforget-prepare input=DIR output=OUT, then data=tokens data.path=OUT)")
    if p.stat().st_size == 0:
        raise ConfigError(f"data file is empty: {p.resolve()}")


def validate_model(m: ModelConfig) -> None:
    """The model's values (position scheme, norms, options of each scheme, ...), one line on failure.

    Raises:
        ConfigError: the message of :func:`xforget.models.validate.validate_model_config` on one line.
    """
    # imported here: the registries of the schemes are model code (torch); the command line's
    # light pass (to_train_config(model=False)) runs before torch is imported
    from xforget.models.validate import validate_model_config

    try:
        validate_model_config(m)
    except (ValueError, TypeError) as exc:
        raise ConfigError(" ".join(str(exc).split())) from None


# --------------------------------------------------------------------------- errors


def valid_keys(node_path: str) -> list[str] | None:
    """The keys of the schema node at ``node_path`` ('' = root), or None if it is not a typed node."""
    keys = schema_keys(TrainConfig, node_path)
    return keys + ["hydra"] if keys is not None and node_path == "" else keys


def check_keys(cfg: DictConfig, schema: Any = TrainConfig, prefix: str = "") -> None:
    """Every key of ``cfg`` must be a field of the schema dataclass (recursively).

    Raises:
        ConfigError: ``unknown config key 'model.foo'; valid keys of model: [...]``.
    """
    by_name = {f.name: f for f in fields(schema)}
    for key in cfg.keys():
        if prefix == "" and key == "hydra":
            continue
        full = f"{prefix}{key}"
        if key not in by_name:
            parent = prefix.rstrip(".")
            raise ConfigError(f"unknown config key '{full}'; valid keys of {parent or 'the top level'}: "
                              f"{valid_keys(parent)}")
        f = by_name[key]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        child = cfg._get_node(key)
        if is_dataclass(default) and isinstance(child, DictConfig):
            check_keys(child, type(default), f"{full}.")


def explain_config_error(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error.

    Unknown keys: ``unknown config key 'model.positon'; valid keys of model: [...]``.
    """
    return explain_error(exc, valid_keys)
