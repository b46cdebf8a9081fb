"""memrope: unbounded-length autoregressive video generation with a fixed-size KV cache."""

from memrope.config import MemRoPEConfig

__all__ = ["MemRoPEConfig"]
__version__ = "0.1.0"
