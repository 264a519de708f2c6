"""Package attributes loaded on first use (PEP 562), so that importing a light module does not import torch.

Importing ``xforget.train.config`` runs ``xforget/__init__.py`` and ``xforget/train/__init__.py``
first. If those imported the model (and with it torch, ~2-4 s), every command would pay for torch
before it could check its arguments, and a typo would take seconds to report. The package
``__init__`` files therefore name their public attributes in a table; :func:`lazy_attributes`
gives the package a module ``__getattr__`` that imports one when it is first read
(``from xforget import Decoder`` and ``xforget.train.train`` work as before), and a ``__dir__``
that lists them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_attributes(package: str, table: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps an attribute to the module that defines it.

    A name not in the table is tried as a submodule (``xforget.train.loop`` without importing it first).

    Raises (from ``__getattr__``):
        AttributeError: neither an attribute of the table nor a submodule.
    """
    module = importlib.import_module(package)

    def __getattr__(name: str) -> object:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
        elif name.startswith("__"):  # probes such as __wrapped__ (inspect, doctest): no submodule lookup
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        setattr(module, name, value)  # later reads are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(table))

    return __getattr__, __dir__
