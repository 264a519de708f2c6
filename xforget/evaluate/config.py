"""Typed configs of ``xforget-eval`` and the ``eval`` node shared with ``xforget-compare``.

Both commands compose a YAML file from ``configs/`` (``eval.yaml``,
``compare.yaml``) over a dataclass schema registered here, so an unknown key
fails with the valid keys listed (:func:`explain_error`), exit code 2, like
``xforget-train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from xforget.errors import ConfigError, schema_keys
from xforget.errors import explain_error as _explain
from xforget.train.config import SYNTHETIC as TASKS  # the synthetic tasks (data.synthetic.TASKS, without torch)
from xforget.train.choices import DEVICES, device_choice
from xforget.train.config import DataConfig

EXIT_CONFIG, EXIT_RUNTIME = 2, 1


@dataclass
class EvalConfig:
    """What ``xforget-eval`` (and ``xforget-compare``) measure for one checkpoint.

    ``seq_len``: the base context; evaluation lengths are ``multiples`` of it
    (null = the run's ``trainer.seq_len``). ``tokens``: scored tokens per
    length, split into ``tokens // length`` windows with evenly spaced starts
    over the validation split (null = the run's validation set size,
    ``eval_batches * batch_size * seq_len``; at 1x these are exactly the windows
    training reports ``val_bpb`` on). ``task``: a synthetic task (``mqar``,
    ``needle``) whose answer accuracy is measured at every length on
    ``task_examples`` fresh examples (null = the run's data, if it is one).
    """

    seq_len: Optional[int] = None
    multiples: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    tokens: Optional[int] = None
    batch_tokens: int = 16384
    per_position: bool = True
    task: Optional[str] = None
    task_examples: int = 64
    task_seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None
    position_buckets: int = 0  # log-spaced per-position buckets per octave, with standard errors (0 = off)
    needle_examples: int = 0  # needle in a haystack (xforget.data.haystack): examples per length and depth (0 = off)
    needle_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    needle_multiples: Optional[list[int]] = None  # lengths of the needle test, multiples of seq_len (null = multiples)
    pruning_windows: int = 1  # validation windows the ACP pruned fraction is averaged over (at 1x and the longest)


@dataclass
class EvalCommandConfig:
    """``xforget-eval checkpoint=RUN_DIR [data=NAME data.path=FILE] [eval.*] [out=FILE]``."""

    checkpoint: str = MISSING  # a run directory, one checkpoint directory, or a hub-style directory (needs data=)
    data: Optional[DataConfig] = None  # null = the run's own data config
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: Optional[str] = None  # JSON path; null = RUN_DIR/eval.json (harness: RUN_DIR/harness.json)
    # lm-evaluation-harness (the `harness` extra): harness=true runs `tasks` instead of the evaluations above
    harness: bool = False
    tasks: list[str] = field(default_factory=list)
    include_path: Optional[str] = None  # a directory of task YAMLs (your own tasks)
    num_fewshot: Optional[int] = None
    limit: Optional[float] = None  # documents per task (or a fraction), for quick checks
    batch_size: int = 8


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="eval_schema", node=EvalCommandConfig)


register()


def valid_keys(schema: type, node_path: str) -> list[str] | None:
    """Keys of the dataclass node at ``node_path`` ('' = root) of ``schema``, or None."""
    return schema_keys(schema, node_path, {"data": DataConfig})


def explain_error(exc: BaseException, schema: type, extra_root_keys: tuple[str, ...] = ()) -> str:
    """One line for a Hydra/OmegaConf composition error against ``schema``.

    Unknown keys read ``unknown config key 'eval.seq_lne'; valid keys of eval: [...]``.
    """

    def keys_of(node_path: str) -> list[str] | None:
        keys = valid_keys(schema, node_path)
        if keys is not None and not node_path:
            keys = keys + [k for k in extra_root_keys if k not in keys]
        return keys

    return _explain(exc, keys_of)


def validate_eval(cfg: EvalConfig) -> None:
    """Raises ConfigError (one line, naming the key) for impossible values."""
    def need(ok: bool, key: str, rule: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"invalid value eval.{key}={value!r}: must be {rule}")

    need(cfg.seq_len is None or cfg.seq_len >= 1, "seq_len", ">= 1 or null", cfg.seq_len)
    need(len(cfg.multiples) >= 1 and all(m >= 1 for m in cfg.multiples), "multiples", "a list of integers >= 1",
         cfg.multiples)
    need(cfg.tokens is None or cfg.tokens >= 1, "tokens", ">= 1 or null", cfg.tokens)
    need(cfg.batch_tokens >= 1, "batch_tokens", ">= 1", cfg.batch_tokens)
    need(cfg.task_examples >= 1, "task_examples", ">= 1", cfg.task_examples)

    need(cfg.task is None or cfg.task in TASKS, "task", f"one of {list(TASKS)} or null", cfg.task)
    need(cfg.threads is None or cfg.threads >= 1, "threads", ">= 1 or null", cfg.threads)
    need(device_choice(cfg.device), "device", DEVICES, cfg.device)
    need(cfg.position_buckets >= 0, "position_buckets", ">= 0 (buckets per octave; 0 = off)", cfg.position_buckets)
    need(cfg.needle_examples >= 0, "needle_examples", ">= 0 (0 = no needle test)", cfg.needle_examples)
    need(len(cfg.needle_depths) >= 1 and all(0.0 <= d <= 1.0 for d in cfg.needle_depths), "needle_depths",
         "a non-empty list of depths in [0, 1]", list(cfg.needle_depths))
    need(cfg.needle_multiples is None or (len(cfg.needle_multiples) >= 1 and all(m >= 1 for m in cfg.needle_multiples)),
         "needle_multiples", "a list of integers >= 1 or null", cfg.needle_multiples)
    need(cfg.pruning_windows >= 1, "pruning_windows", ">= 1", cfg.pruning_windows)


def split_override(arg: str) -> tuple[str, str | None]:
    """('model.dim', '32') for 'model.dim=32' (leading +, ++ or ~ dropped); value None without '='."""
    key, eq, value = arg.partition("=")
    return key.lstrip("+~"), (value if eq else None)
