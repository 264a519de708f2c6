"""Attention-bias builders, registered by name (see :mod:`xforget.bias.registry`).

Importing this package registers every builder module below.
"""

from . import alibi, dynamic, forget_gate, fox_per_row, t5  # noqa: F401  (registration side effect)
from .alibi import AlibiBias, alibi_slopes
from .dynamic import DynamicPositionBias
from .forget_gate import ForgetGate
from .fox_per_row import PerRowForgetGate
from .t5 import T5RelativeBias, t5_bucket
from .registry import BiasBuilder, DecayGates, get_bias_builder, register_bias, registered_biases

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
