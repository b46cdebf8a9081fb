"""Registry of adapters and :func:`attach`, which hands an object to the adapter that recognises it.

An adapter makes some foreign model code generate with a :class:`~memrope.MemRoPECache`. It is an
:class:`Adapter` record (a name, a one-line description, ``recognises(obj) -> bool`` and
``attach(obj, cache_config, **options)``) passed to :func:`register_adapter`, usually at the
bottom of the adapter's own module. Built in: ``upstream`` (Self-Forcing / LongLive / official
MemRoPE pipelines, wrappers and models, :mod:`memrope.adapters.upstream`). See ``docs/extending.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from typing_extensions import Self

from memrope.cache import MemRoPECache
from memrope.config import MemRoPEConfig

__all__ = [
    "Adapter",
    "AttachmentContext",
    "AttachmentLike",
    "attach",
    "available_adapters",
    "find_adapter",
    "get_adapter",
    "register_adapter",
    "unregister_adapter",
]


class AttachmentLike(Protocol):
    """What an adapter's ``attach`` returns: a handle that undoes the attachment.

    ``cache_config`` is the policy in use, ``cache`` the cache of the current video (``None``
    before the first call), ``active`` whether it is still attached; ``remove()`` (or leaving a
    ``with`` block) restores the object as it was, and is harmless twice.
    """

    cache_config: MemRoPEConfig
    active: bool

    @property
    def cache(self) -> MemRoPECache | None: ...

    def reset(self) -> None: ...

    def remove(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None: ...


class AttachmentContext:
    """Base of the built-in attachments: a ``with`` block's exit calls ``remove()``."""

    def remove(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()


@dataclass(frozen=True)
class Adapter:
    """One registered adapter.

    Attributes:
        name: the registry name (``attach(obj, adapter=name)`` picks it explicitly).
        description: one line saying which objects it takes (shown when nothing recognises an object).
        recognises: ``recognises(obj) -> bool``: whether this adapter can attach to ``obj``; cheap,
            no side effects, never raises for a foreign object.
        attach: ``attach(obj, cache_config, **options) -> AttachmentLike``; ``cache_config`` is a
            :class:`MemRoPEConfig` or ``None`` (the adapter's default), ``options`` are adapter-specific.
    """

    name: str
    description: str
    recognises: Callable[[object], bool]
    attach: Callable[..., AttachmentLike]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"Adapter name must be a non-empty identifier, got {self.name!r}")
        if not isinstance(self.description, str) or not self.description.strip() or "\n" in self.description:
            raise ValueError(f"Adapter description must be one non-empty line, got {self.description!r}")
        for field in ("recognises", "attach"):
            if not callable(getattr(self, field)):
                raise TypeError(
                    f"Adapter {field} must be callable, got {type(getattr(self, field)).__name__}"
                )


_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Make ``adapter`` one that :func:`attach` tries (after those registered before it); returns it.

    Registering another adapter under a taken name raises ``ValueError``; registering the same one
    again is a no-op.
    """
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter must be a memrope.adapters.Adapter, got {type(adapter).__name__}")
    existing = _ADAPTERS.get(adapter.name)
    if existing is not None and existing != adapter:
        raise ValueError(f"an adapter named {adapter.name!r} is already registered ({existing.description})")
    _ADAPTERS[adapter.name] = adapter
    return adapter


def unregister_adapter(name: str) -> Adapter:
    """Remove the adapter called ``name`` from the registry and return it."""
    adapter = get_adapter(name)
    del _ADAPTERS[name]
    return adapter


def get_adapter(name: str) -> Adapter:
    """The registered adapter called ``name``; ``ValueError`` naming the registered ones otherwise."""
    adapter = _ADAPTERS.get(name) if isinstance(name, str) else None
    if adapter is None:
        raise ValueError(f"adapter must be one of {list(available_adapters())}, got {name!r}")
    return adapter


def available_adapters() -> tuple[str, ...]:
    """Names of the registered adapters, in the order :func:`attach` tries them."""
    return tuple(_ADAPTERS)


def _supported() -> str:
    return "".join(f"\n  {adapter.name}: {adapter.description}" for adapter in _ADAPTERS.values())


def find_adapter(obj: object) -> Adapter:
    """The one registered adapter that recognises ``obj``.

    Raises:
        TypeError: when none does (the message lists each adapter's description), or when several
            do (name one with ``attach(obj, adapter=...)``).
    """
    matches = [adapter for adapter in _ADAPTERS.values() if adapter.recognises(obj)]
    if not matches:
        raise TypeError(
            f"no adapter recognises the {type(obj).__name__} given to attach(); supported:{_supported()}"
        )
    if len(matches) > 1:
        names = [adapter.name for adapter in matches]
        raise TypeError(
            f"the {type(obj).__name__} given to attach() is recognised by the adapters {names}; "
            f"choose one with adapter={names[0]!r} (or another of them)"
        )
    return matches[0]


def attach(
    obj: object, cache_config: MemRoPEConfig | None = None, *, adapter: str | None = None, **options: Any
) -> AttachmentLike:
    """Make ``obj`` generate with a MemRoPE cache, through the registered adapter that recognises it.

    Args:
        obj: the object to attach to; today a Self-Forcing / LongLive / official-MemRoPE causal
            inference pipeline, its ``WanDiffusionWrapper`` or the causal Wan model (adapter
            ``upstream``, see :func:`memrope.adapters.upstream.attach`).
        cache_config: the cache policy, or ``None`` for the adapter's default.
        adapter: the name of the adapter to use instead of asking each which recognises ``obj``.
        **options: passed to the adapter's ``attach`` (for ``upstream``: any :class:`MemRoPEConfig`
            field, ``merge_lora``, ``key_workspace``).

    Returns:
        the adapter's attachment; a context manager whose exit (or ``remove()``) restores ``obj``.

    Raises:
        TypeError: when no adapter (or more than one) recognises ``obj``, the named adapter does not,
            or ``cache_config`` is not a :class:`MemRoPEConfig`; what the adapter raises otherwise.
        ValueError: for an unknown adapter name.
    """
    if cache_config is not None and not isinstance(cache_config, MemRoPEConfig):
        raise TypeError(f"cache_config must be a MemRoPEConfig or None, got {type(cache_config).__name__}")
    if adapter is None:
        chosen = find_adapter(obj)
    else:
        chosen = get_adapter(adapter)
        if not chosen.recognises(obj):
            raise TypeError(
                f"adapter {adapter!r} does not recognise the {type(obj).__name__} given to attach(); "
                f"it takes: {chosen.description}"
            )
    return chosen.attach(obj, cache_config, **options)
