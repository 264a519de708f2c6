"""xforget: a readable PyTorch model zoo for forgetting attention and positional schemes."""

from .autoregressive import AutoregressiveWrapper
from .cache import Cache
from .config import ModelConfig, build_model
from .continuous import ContinuousTransformerWrapper
from .interop import from_x_transformers
from .layers import AttentionLayers, CrossAttender, Decoder, Encoder
from .wrapper import TransformerWrapper
from .xtransformer import XTransformer

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
