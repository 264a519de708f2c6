"""xforget: a readable PyTorch model zoo for forgetting attention and positional schemes.

The package's layers, bottom to top (imports point down only; ``make test`` checks it with import-linter):

* :mod:`xforget.ops`          -- attention kernels (forgetting attention, its backends, pruning).
* :mod:`xforget.nn`           -- building blocks (attention layer, bias registry, norms, rotary, KV cache).
* :mod:`xforget.models`       -- assemblies and their config (Decoder, TransformerWrapper, ModelConfig).
* :mod:`xforget.data`         -- corpora, tokenizers, prepared token shards, batches.
* :mod:`xforget.train`, :mod:`xforget.evaluate`, :mod:`xforget.compare` -- training, evaluation, comparison.
* :mod:`xforget.integrations` -- x-transformers interop, lm-evaluation-harness.
* :mod:`xforget.commands`     -- the command-line programs.

This module is the public face: everything a user imports from ``xforget``.
"""

from typing import TYPE_CHECKING

from xforget import _compat
from xforget.lazy import lazy_attributes

_compat.install()  # old module paths (xforget.config, xforget.bias, ...) keep working

# Loaded on first use: the command-line programs import light modules of this package and check
# their arguments before torch is imported (see xforget/lazy.py).
_PUBLIC = {
    "from_x_transformers": "xforget.integrations.interop",
    "AutoregressiveWrapper": "xforget.models.autoregressive",
    "ModelConfig": "xforget.models.config",
    "ContinuousTransformerWrapper": "xforget.models.continuous",
    "AttentionLayers": "xforget.models.layers",
    "CrossAttender": "xforget.models.layers",
    "Decoder": "xforget.models.layers",
    "Encoder": "xforget.models.layers",
    "TransformerWrapper": "xforget.models.wrapper",
    "build_model": "xforget.models.wrapper",
    "XTransformer": "xforget.models.xtransformer",
    "Cache": "xforget.nn.kv_cache",
}
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

if TYPE_CHECKING:  # for type checkers and editors; at run time the table above answers
    from xforget.integrations.interop import from_x_transformers
    from xforget.models.autoregressive import AutoregressiveWrapper
    from xforget.models.config import ModelConfig
    from xforget.models.continuous import ContinuousTransformerWrapper
    from xforget.models.layers import AttentionLayers, CrossAttender, Decoder, Encoder
    from xforget.models.wrapper import TransformerWrapper, build_model
    from xforget.models.xtransformer import XTransformer
    from xforget.nn.kv_cache import Cache

__all__ = [
    "AttentionLayers",
    "AutoregressiveWrapper",
    "Cache",
    "ContinuousTransformerWrapper",
    "CrossAttender",
    "Decoder",
    "Encoder",
    "ModelConfig",
    "TransformerWrapper",
    "XTransformer",
    "build_model",
    "from_x_transformers",
]
__version__ = "0.1.0"
