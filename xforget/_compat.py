"""Old module paths, kept importable after the package was arranged into layers.

Every name a user, a script or the README imported before the layout of
``nn/``, ``models/``, ``integrations/`` and ``commands/`` keeps working, without
a file per old name in the package root: a meta-path finder maps the old name
to the module's new home and hands back *that same module object* (so
``xforget.config.ModelConfig is xforget.models.config.ModelConfig``, and a
monkeypatch on either is seen by both). ``python -m OLD.NAME`` runs the new
module. A moved package maps its submodules too (``xforget.bias.alibi``).

This file is the one record of what moved where; add a line when a public
module moves, never remove one.
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


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
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
