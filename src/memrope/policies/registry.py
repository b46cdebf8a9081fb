"""Registry of cache policies: ``MemRoPEConfig(policy="name")`` looks the name up here."""

from __future__ import annotations

from memrope.policies.base import CachePolicy

__all__ = ["available_policies", "get_policy", "register_policy"]

_POLICIES: dict[str, type[CachePolicy]] = {}
_BUILT_IN_ORDER = ("memrope", "sink", "full")


def register_policy(policy: type[CachePolicy]) -> type[CachePolicy]:
    """Make ``policy`` (a :class:`CachePolicy` subclass) available as ``MemRoPEConfig(policy=policy.name)``.

    Usable as a class decorator. Registering another class under a taken name raises
    ``ValueError``; registering the same class again is a no-op.
    """
    if not isinstance(policy, type) or not issubclass(policy, CachePolicy):
        raise TypeError(f"policy must be a CachePolicy subclass, got {policy!r}")
    name = policy.name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"policy.name must be a non-empty identifier, got {name!r} on {policy.__name__}")
    existing = _POLICIES.get(name)
    if existing is not None and existing is not policy:
        raise ValueError(f"a cache policy named {name!r} is already registered ({existing.__qualname__})")
    reserved = {"sink", "recent", "current"}
    if reserved & set(policy.memory_slots) or len(set(policy.memory_slots)) != len(policy.memory_slots):
        raise ValueError(
            f"{policy.__name__}.memory_slots must be distinct names other than {sorted(reserved)}, got {policy.memory_slots}"
        )
    _POLICIES[name] = policy
    return policy


def get_policy(name: str) -> type[CachePolicy]:
    """The registered policy class called ``name``; ``ValueError`` naming the registered ones otherwise."""
    policy = _POLICIES.get(name) if isinstance(name, str) else None
    if policy is None:
        raise ValueError(f"policy must be one of {available_policies()}, got {name!r}")
    return policy


def available_policies() -> tuple[str, ...]:
    """Names of the registered policies: the built-in ones (``memrope``, ``sink``, ``full``) first."""
    built_in = [name for name in _BUILT_IN_ORDER if name in _POLICIES]
    return (*built_in, *(name for name in _POLICIES if name not in _BUILT_IN_ORDER))
