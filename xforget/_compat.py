"""Old module paths, kept importable after the package was arranged into layers.

Every name a user, a script or the README imported before the layout of
``nn/``, ``models/``, ``integrations/`` and ``commands/`` keeps working, without
a file per old name in the package root: a meta-path finder maps the old name
to the module's new home and hands back *that same module object* (so
``xforget.config.ModelConfig is xforget.models.config.ModelConfig``, and a
monkeypatch on either is seen by both). ``python -m OLD.NAME`` runs the new
module. A moved package maps its submodules too (``xforget.bias.alibi``).

A few public *names* moved between modules where the layers forbid a re-export
(``build_model`` left the pure-data ``models/config.py`` for ``models/wrapper.py``,
which imports it). :data:`MOVED_NAMES` lists them; the module they left answers
for them lazily (a module ``__getattr__``, PEP 562), so ``from xforget.config import
build_model`` keeps working without an import that points up a layer.

This file is the one record of what moved where; add a line when a public
module or name moves, never remove one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

MOVED: dict[str, str] = {
    "xforget.attention": "xforget.nn.attention",
    "xforget.norms": "xforget.nn.norms",
    "xforget.rotary": "xforget.nn.rotary",
    "xforget.kv_shift": "xforget.nn.kv_shift",
    "xforget.memory_kv": "xforget.nn.memory_kv",
    "xforget.value_residual": "xforget.nn.value_residual",
    "xforget.feedforward": "xforget.nn.feedforward",
    "xforget.embeddings": "xforget.nn.embeddings",
    "xforget.cache": "xforget.nn.kv_cache",
    "xforget.evict": "xforget.nn.evict",
    "xforget.bias": "xforget.nn.bias",
    "xforget.dense_attention": "xforget.ops.dense",
    "xforget.positions": "xforget.models.positions",
    "xforget.config": "xforget.models.config",
    "xforget.validate": "xforget.models.validate",
    "xforget.aliases": "xforget.models.aliases",
    "xforget.layers": "xforget.models.layers",
    "xforget.wrapper": "xforget.models.wrapper",
    "xforget.autoregressive": "xforget.models.autoregressive",
    "xforget.xtransformer": "xforget.models.xtransformer",
    "xforget.continuous": "xforget.models.continuous",
    "xforget.sampling": "xforget.models.sampling",
    "xforget.hub": "xforget.models.pretrained",
    "xforget.interop": "xforget.integrations.interop",
    "xforget.evaluate.harness": "xforget.integrations.harness",
    "xforget.evaluate.harness_cli": "xforget.commands.harness",
    "xforget.evaluate.cli": "xforget.commands.evaluate",
    "xforget.train.cli": "xforget.commands.train",
    "xforget.compare.cli": "xforget.commands.compare",
    "xforget.generate": "xforget.commands.generate",
    "xforget.export": "xforget.commands.export",
    "xforget.cli_args": "xforget.commands.args",
    "xforget.config_errors": "xforget.errors",
    "xforget.data.prepare_cli": "xforget.commands.prepare",
    "xforget.data.cache": "xforget.data.corpora.cache",
    "xforget.data.stdlib": "xforget.data.corpora.stdlib",
    "xforget.data.text": "xforget.data.corpora.text",
    "xforget.data.shakespeare": "xforget.data.corpora.shakespeare",
    "xforget.data.sources": "xforget.data.prepare_inputs",
    "xforget.compare.runner": "xforget.compare.runs",
    "xforget.train.peak": "xforget.train.peak_flops",
}

# module (its current name) -> {name that left it: "new.module" or "new.module:new_name"}
MOVED_NAMES: dict[str, dict[str, str]] = {
    "xforget.models.config": {"build_model": "xforget.models.wrapper"},
    "xforget.data.corpus": {"load_corpus": "xforget.data.corpora", "SYNTHETIC_BYTES": "xforget.data.corpora"},
    "xforget.evaluate.config": {"CompareConfig": "xforget.compare.config", "ComparePrepare": "xforget.compare.config",
                                "TRAIN_ROOTS": "xforget.compare.config"},
    "xforget.models.pretrained": {"load_pretrained": "xforget.train.loading",
                                  "export_run": "xforget.commands.export",
                                  "load_tokenizer": "xforget.data.tokenizer"},
}


def new_name(old: str) -> str | None:
    """The module's current name for an old one (a moved package's submodules included), else None."""
    if old in MOVED:
        return MOVED[old]
    head, _, tail = old.rpartition(".")
    while head:
        if head in MOVED:
            return f"{MOVED[head]}.{old[len(head) + 1:]}"
        head, _, _ = head.rpartition(".")
    return None


def _answer_moved_names(module) -> None:
    """Give ``module`` a PEP 562 ``__getattr__`` for the names that left it (:data:`MOVED_NAMES`)."""
    moved = MOVED_NAMES[module.__name__]

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
        where, _, new = moved[name].partition(":")
        return getattr(importlib.import_module(where), new or name)

    module.__getattr__ = __getattr__


class _WithMovedNames(importlib.abc.Loader):
    """The real loader of a module that names left, plus their lazy answers."""

    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        self.real.exec_module(module)
        _answer_moved_names(module)

    def get_code(self, fullname):
        return self.real.get_code(fullname)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_NAMES:
            real = importlib.machinery.PathFinder.find_spec(fullname, path)
            if real is not None and real.loader is not None:
                real.loader = _WithMovedNames(real.loader)
            return real
        target_name = new_name(fullname)
        if target_name is None:
            return None
        real = importlib.util.find_spec(target_name)
        if real is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=real.origin,
                                              is_package=real.submodule_search_locations is not None)
        spec.submodule_search_locations = real.submodule_search_locations
        return spec

    def create_module(self, spec):
        return importlib.import_module(new_name(spec.name))  # the same object under both names

    def exec_module(self, module):
        pass  # already executed under its new name

    def get_code(self, fullname):  # `python -m OLD.NAME` (runpy) runs the new module's code
        real = importlib.util.find_spec(new_name(fullname))
        return real.loader.get_code(real.name)


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before the path finder, which would load a second copy of a moved submodule
