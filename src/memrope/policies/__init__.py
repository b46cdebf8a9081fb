"""Cache policies: one module per policy, found by name through a registry.

Built in: ``memrope`` (EMA memory tokens, the paper), ``sink`` (sink + FIFO) and ``full``
(unbounded). A new policy is one :class:`CachePolicy` subclass decorated with
:func:`register_policy`; ``MemRoPEConfig(policy="its_name")`` then builds caches with it
(see ``docs/extending.md``).
"""

from __future__ import annotations

from memrope.policies.base import CacheGeometry, CachePolicy, MemorySlot
from memrope.policies.full import FullPolicy
from memrope.policies.memrope import MemRoPEPolicy
from memrope.policies.registry import available_policies, get_policy, register_policy
from memrope.policies.sink import SinkPolicy

__all__ = [
    "CacheGeometry",
    "CachePolicy",
    "FullPolicy",
    "MemRoPEPolicy",
    "MemorySlot",
    "SinkPolicy",
    "available_policies",
    "get_policy",
    "register_policy",
]
