"""The typed config of ``xforget-compare`` (``configs/compare.yaml``), registered with Hydra's ConfigStore.

Unknown keys fail with the valid keys listed, like every other command
(:func:`xforget.evaluate.config.explain_error`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from xforget.evaluate.config import EvalConfig

@dataclass
class ComparePrepare:
    """``prepare:`` of ``xforget-compare``: token shards made before training (``xforget-prepare`` keys).

    ``input: stdlib`` = this Python's standard-library corpus; ``output`` null =
    ``<comparison dir>/data/``. See :mod:`xforget.compare.prepared`.
    """

    input: str = "stdlib"
    output: Optional[str] = None
    tokenizer: str = "bpe"
    vocab_size: int = 4096
    text_field: str = "text"
    val_fraction: float = 0.05
    seed: int = 0
    num_proc: int = 1


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
