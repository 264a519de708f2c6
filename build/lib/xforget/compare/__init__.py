"""Compare positional schemes by flag: train each with the same budget, evaluate, tabulate and plot.

* :mod:`.runner` -- plan the (scheme, seed) runs, train them in subprocesses, re-use finished ones.
* :mod:`.report` -- ``compare.json`` and the ``compare.md`` table.
* :mod:`.plots`  -- PNG plots (matplotlib, Agg).
* :mod:`.cli`    -- ``xforget-compare`` (:func:`run_compare` is the same from Python).
"""

from .cli import main, run_compare

__all__ = ["main", "run_compare"]
