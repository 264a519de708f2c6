"""xforget: a readable PyTorch model zoo for forgetting attention and positional schemes."""

from .autoregressive import AutoregressiveWrapper
from .cache import Cache
from .layers import AttentionLayers, Decoder, Encoder
from .wrapper import TransformerWrapper

__all__ = ["AttentionLayers", "AutoregressiveWrapper", "Cache", "Decoder", "Encoder", "TransformerWrapper"]
__version__ = "0.1.0"
