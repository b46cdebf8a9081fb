"""Policy ``full``: an unbounded cache, every frame at its global position (``docs/design.md`` §6).

For comparisons and short clips: the cache grows with the video, up to the RoPE table
(``max_positions`` frames), and nothing is ever evicted.
"""

from __future__ import annotations

from memrope.policies.base import CachePolicy
from memrope.policies.registry import register_policy

__all__ = ["FullPolicy"]


@register_policy
class FullPolicy(CachePolicy):
    """Keep everything (official ``local_attn_size: -1``)."""

    name = "full"
    bounded = False
