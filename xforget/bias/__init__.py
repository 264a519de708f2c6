"""Attention-bias builders, registered by name (see :mod:`xforget.bias.registry`).

Importing this package registers every builder module below.
"""

from . import alibi, forget_gate  # noqa: F401  (registration side effect)
from .alibi import AlibiBias, alibi_slopes
from .forget_gate import ForgetGate
from .registry import BiasBuilder, DecayGates, get_bias_builder, register_bias, registered_biases

__all__ = [
    "AlibiBias",
    "BiasBuilder",
    "DecayGates",
    "ForgetGate",
    "alibi_slopes",
    "get_bias_builder",
    "register_bias",
    "registered_biases",
]
