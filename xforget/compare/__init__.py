"""Compare positional schemes by flag: train each with the same budget, evaluate, tabulate and plot.

* :mod:`.pipeline` -- :func:`run_compare`: plan, train, evaluate, report (``xforget-compare`` from Python).
* :mod:`.config` -- the typed comparison config (``configs/compare.yaml``).
* :mod:`.runs`   -- plan the (scheme, seed) runs, train them in subprocesses, re-use finished ones.
* :mod:`.report` -- ``compare.json`` and the ``compare.md`` table.
* :mod:`.plots`  -- PNG plots (matplotlib, Agg).

The command itself is :mod:`xforget.commands.compare`.
"""

from typing import TYPE_CHECKING

from xforget.lazy import lazy_attributes

# Loaded on first use, so that `xforget.compare.config` imports without torch.
__getattr__, __dir__ = lazy_attributes(__name__, {"run_compare": "xforget.compare.pipeline"})

if TYPE_CHECKING:
    from xforget.compare.pipeline import run_compare

__all__ = ["run_compare"]
