"""Evaluation of trained runs: bits per byte, per-position loss, length extrapolation, task accuracy.

* :mod:`.metrics` -- loss / bpb / per-position loss of a model on fixed windows (pure functions).
* :mod:`.core`    -- :func:`evaluate_run` for one run directory (what ``xforget-eval`` reports).
* :mod:`.config`  -- typed configs (``eval.*`` keys) shared with ``xforget-compare``.
* :mod:`.cli`     -- ``xforget-eval checkpoint=RUN_DIR data=... eval.seq_len=...``.
"""

from typing import TYPE_CHECKING

from xforget.lazy import lazy_attributes

# Loaded on first use, so that `xforget.evaluate.config` (xforget-eval's schema) imports without torch.
__getattr__, __dir__ = lazy_attributes(__name__, {
    "EvalConfig": "xforget.evaluate.config", "evaluate_model": "xforget.evaluate.core",
    "evaluate_run": "xforget.evaluate.core", "format_table": "xforget.evaluate.core",
    "task_accuracy": "xforget.evaluate.core", "WindowEval": "xforget.evaluate.metrics",
    "evaluate_windows": "xforget.evaluate.metrics", "nats_to_bpb": "xforget.evaluate.metrics",
    "token_losses": "xforget.evaluate.metrics",
})

if TYPE_CHECKING:
    from xforget.evaluate.config import EvalConfig
    from xforget.evaluate.core import evaluate_model, evaluate_run, format_table, task_accuracy
    from xforget.evaluate.metrics import WindowEval, evaluate_windows, nats_to_bpb, token_losses

__all__ = ["EvalConfig", "WindowEval", "evaluate_model", "evaluate_run", "evaluate_windows", "format_table",
           "nats_to_bpb", "task_accuracy", "token_losses"]
