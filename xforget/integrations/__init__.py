"""Integrations with other projects: they import the core and are never imported by it.

* :mod:`.interop`  -- weights and keyword names from/to x-transformers.
* :mod:`.harness`  -- the lm-evaluation-harness model ``xforget`` (extra ``harness``).
"""
