"""Attention-bias builders, registered by name (see :mod:`xforget.nn.bias.registry`).

Importing this package registers every builder module below.
"""

from xforget.nn.bias import alibi, dynamic, forget_gate, fox_per_row, t5  # noqa: F401  (registration side effect)
from xforget.nn.bias.alibi import AlibiBias, alibi_slopes
from xforget.nn.bias.dynamic import DynamicPositionBias
from xforget.nn.bias.forget_gate import ForgetGate
from xforget.nn.bias.fox_per_row import PerRowForgetGate
from xforget.nn.bias.t5 import T5RelativeBias, t5_bucket
from xforget.nn.bias.registry import BiasBuilder, DecayGates, get_bias_builder, register_bias, registered_biases

__all__ = [
    "AlibiBias",
    "BiasBuilder",
    "DecayGates",
    "DynamicPositionBias",
    "ForgetGate",
    "PerRowForgetGate",
    "T5RelativeBias",
    "t5_bucket",
    "alibi_slopes",
    "get_bias_builder",
    "register_bias",
    "registered_biases",
]
