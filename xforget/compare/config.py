"""The typed config of ``xforget-compare`` (``configs/compare.yaml``), registered with Hydra's ConfigStore.

Unknown keys fail with the valid keys listed, like every other command
(:func:`xforget.evaluate.config.explain_error`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf, open_dict

from xforget.data.prepare import PrepareConfig
from xforget.errors import ConfigError
from xforget.evaluate.config import EvalConfig, explain_error, split_override, validate_eval
from xforget.train.config import compose_named



@dataclass
class ComparePrepare(PrepareConfig):
    """``prepare:`` of ``xforget-compare``: token shards made before training. Its keys are
    ``xforget-prepare``'s (:class:`~xforget.data.prepare.PrepareConfig`, the one list of them), with
    other defaults: ``input: stdlib`` = this Python's standard-library corpus as one document
    (``stdlib_files``: the same bytes, one document per source file, for ``data.pack_documents=true``); ``output`` null =
    ``<comparison dir>/data/``; a BPE tokenizer. ``overwrite`` and ``progress`` are set by the
    comparison. See :mod:`xforget.compare.prepared`.
    """

    input: str = "stdlib"
    output: Optional[str] = None
    tokenizer: str = "bpe"

    def prepare_config(self) -> PrepareConfig:
        """The same settings as a plain :class:`PrepareConfig` (``output`` null becomes ``""``: chosen later)."""
        return PrepareConfig(**{**asdict(self), "output": self.output or ""})


@dataclass
class CompareConfig:
    """``xforget-compare``'s own keys; ``model.*``, ``data``, ``optim.*`` and ``trainer.*``
    go to every training run unchanged (validated by the training config)."""

    positions: list[str] = field(default_factory=lambda: ["none", "absolute", "rotary", "alibi", "fox"])
    seeds: list[int] = field(default_factory=lambda: [0])
    eval: EvalConfig = field(default_factory=EvalConfig)
    retrain: bool = False  # train again even when a finished run with the same config exists
    subprocess: bool = True  # train each run in its own process (isolated memory, per-run peak RSS)
    plots: bool = True
    train: list[str] = field(default_factory=list)  # training overrides for every run (before the command line's)
    prepare: Optional[ComparePrepare] = None  # token shards to make first; every run trains on them (data=tokens)
    jobs: int = 1  # training runs (and evaluations) at once, each in its own process
    findings: bool = True  # compare.md: which of the FoX paper's findings hold (needs fox and rotary among positions)


TRAIN_ROOTS = ("model", "data", "optim", "trainer")


def register() -> None:
    ConfigStore.instance().store(name="compare_schema", node=CompareConfig)


register()


def partition_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(comparison overrides, training overrides).

    Raises:
        ConfigError: ``model=...`` or ``seed=...`` (set per run), or a flag.
    """
    mine, train = [], []
    for arg in argv:
        key, value = split_override(arg)
        if arg.startswith("-"):
            raise ConfigError(f"unsupported flag {arg!r}; xforget-compare takes key=value overrides only (see --help)")
        root = key.split(".")[0]
        if key == "model":
            raise ConfigError(f"'{arg}': the model preset is set per scheme; list schemes in positions=[...] "
                              "(model.* keys apply to every scheme)")
        if root == "seed":
            raise ConfigError(f"'{arg}': use seeds=[...] (each scheme is trained once per seed)")
        if key in ("positions", "seeds") and value is not None and not value.strip().startswith("["):
            raise ConfigError(f"'{arg}': {key} is a list; write {key}=[{value}] (several: {key}=[a,b])")
        (train if root in TRAIN_ROOTS else mine).append(arg)
    return mine, train


def load_compare_config(overrides: list[str]) -> tuple[CompareConfig, Path]:
    """Compose ``configs/compare.yaml``; returns the typed config and the output directory.

    Raises:
        ConfigError: one line naming the bad key and the valid keys.
    """
    # prepare.* keys are applied after composing: the node is null unless a preset sets it, and Hydra
    # cannot set a key of a null node (prepare.input=X alone would fail with "Unexpected type for root")
    prepare_args = [a for a in overrides if split_override(a)[0].split(".")[0] == "prepare"]
    try:
        cfg = compose_named("compare", [a for a in overrides if a not in prepare_args], return_hydra_config=True)
        out_dir = Path(str(cfg.hydra.run.dir))
        with open_dict(cfg):
            del cfg["hydra"]
        _apply_prepare_overrides(cfg, prepare_args)
        typed: CompareConfig = OmegaConf.to_object(cfg)
    except Exception as exc:
        raise ConfigError(explain_error(exc, CompareConfig, extra_root_keys=(*TRAIN_ROOTS, "hydra"))) from exc
    validate_eval(typed.eval)
    check_plan(list(typed.positions), list(typed.seeds))
    return typed, out_dir


def _apply_prepare_overrides(cfg, args: list[str]) -> None:
    """``prepare=...`` / ``prepare.KEY=VALUE`` in order, read with Hydra's override grammar; a key of a
    null ``prepare`` starts it from :class:`ComparePrepare`'s defaults (``prepare=null`` turns it off).

    Raises:
        ValueError, omegaconf errors: a value that does not parse, an unknown key, a wrong type
        (the caller turns them into one line).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in args:
        override = parser.parse_overrides([arg])[0]
        key, value = override.key_or_group, override.value()
        if override.is_delete():
            key, value = "prepare", None
        if key == "prepare" and value is None:
            cfg.prepare = None
            continue
        if key == "prepare" or cfg.prepare is None:  # prepare={...} sets its keys over the defaults
            cfg.prepare = OmegaConf.structured(ComparePrepare)
        OmegaConf.update(cfg, key, value, merge=True)


def check_plan(positions: list[str], seeds: list[int]) -> None:
    """At least one scheme and one seed, none twice, seeds >= 0.

    Raises:
        ConfigError: one line naming the setting.
    """
    if not positions:
        raise ConfigError("positions is empty; e.g. positions=[none,fox]")
    if not seeds:
        raise ConfigError("seeds is empty; e.g. seeds=[0,1]")
    bad = [s for s in seeds if not isinstance(s, int) or s < 0]
    if bad:
        raise ConfigError(f"invalid value seeds={seeds}: {bad[0]} is negative; seeds must be integers >= 0, "
                          "e.g. seeds=[0,1]")
    if len(set(positions)) != len(positions) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"positions and seeds must not repeat: positions={positions} seeds={seeds}")
