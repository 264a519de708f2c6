"""Checks a comparison runs before training anything, so that a 40-minute run does not fail at evaluation.

Each failure is one :class:`~xforget.train.config.ConfigError` line naming the
bad value, why, and what would work.
"""

from __future__ import annotations

from xforget.compare.config import CompareConfig
from xforget.data.haystack import min_needle_length
from xforget.data.tokenizer import load_tokenizer
from xforget.data.tokens import load_tokens
from xforget.data.training import load_training_data
from xforget.errors import ConfigError


def preflight(cfg: CompareConfig, runs) -> None:
    """Evaluation lengths, the validation split and the needle test against the planned runs.

    * ``eval.multiples`` strictly increasing (each length evaluated once, tables in order);
    * ``jobs`` >= 1;
    * the data every run trains on can be read and split (a missing ``data.path`` fails here, before
      any run directory is made, not in every training run);
    * on prepared token data: the longest evaluation length fits the validation
      split, and the shortest fits the needle, question and answer.

    Raises:
        ConfigError, DataError: one line.
    """
    e = cfg.eval
    mult = [int(m) for m in e.multiples]
    if any(b <= a for a, b in zip(mult, mult[1:])):
        raise ConfigError(f"invalid value eval.multiples={mult}: must be strictly increasing multiples of the "
                          "training context, e.g. [1,2,4,8]")
    if cfg.jobs < 1:
        raise ConfigError(f"invalid value jobs={cfg.jobs}: must be >= 1 (training processes at once)")
    if not runs:
        return
    c0 = runs[0].cfg
    base = e.seq_len or c0.trainer.seq_len
    lengths = [m * base for m in mult]
    load_training_data(c0.data, c0.trainer.seq_len)  # DataError: one line naming the data
    if c0.data.name != "tokens" or not c0.data.path:
        return

    data = load_tokens(c0.data.path)
    n_val = len(data.val)
    if n_val < lengths[-1] + 1:
        raise ConfigError(f"evaluation length {mult[-1]} x {base} = {lengths[-1]} tokens is too long: the validation "
                          f"split of {data.path} has {n_val} tokens (needs {lengths[-1] + 1}); lower eval.multiples "
                          "or eval.seq_len, or prepare more validation text (prepare.val_fraction)")
    if e.needle_examples > 0:
        need = min_needle_length(load_tokenizer(c0.data.path))
        needle = [int(m) * base for m in (e.needle_multiples or mult)]
        if max(needle) > n_val - 1:
            raise ConfigError(f"needle length {max(needle)} tokens is too long: the validation split of {data.path} "
                              f"has {n_val} tokens; lower eval.needle_multiples")
        if min(needle) < need:
            raise ConfigError(f"needle length {min(needle)} tokens is too short for the needle test (needle, "
                              f"question and answer need at least {need}); raise eval.seq_len or set "
                              "eval.needle_examples=0")
