"""memrope: unbounded-length autoregressive video generation with a fixed-size KV cache.

MemRoPE (arXiv 2603.12513): evicted frames are folded into two EMA memory tokens and keys are
cached without RoPE, so positions are re-applied on the fly and never leave the trained range.
"""

from memrope.adapters import Attachment, attach
from memrope.attention import attend, rope_on_the_fly
from memrope.cache import CacheContext, MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.rope import RotaryEmbedding, apply_rotary, frame_grid_positions, wan_axis_pairs

__all__ = [
    "Attachment",
    "CacheContext",
    "MemRoPECache",
    "MemRoPEConfig",
    "RotaryEmbedding",
    "apply_rotary",
    "attach",
    "attend",
    "frame_grid_positions",
    "rope_on_the_fly",
    "wan_axis_pairs",
]
__version__ = "0.1.0"
