"""Policy ``sink``: sink frames plus a FIFO window (official ``compression_method: eviction``).

Evicted frames are forgotten. This is what Self-Forcing and LongLive do, with memrope's
slot-relative RoPE on top (``docs/design.md`` §6).
"""

from __future__ import annotations

from memrope.policies.base import CachePolicy
from memrope.policies.registry import register_policy

__all__ = ["SinkPolicy"]


@register_policy
class SinkPolicy(CachePolicy):
    """Sink + FIFO: the oldest non-sink frames leave the cache first."""

    name = "sink"
