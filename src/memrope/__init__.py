"""memrope: unbounded-length autoregressive video generation with a fixed-size KV cache.

MemRoPE (arXiv 2603.12513): evicted frames are folded into two EMA memory tokens and keys are
cached without RoPE, so positions are re-applied on the fly and never leave the trained range.

``import memrope`` loads only the core (config, policies, cache, RoPE, attention). Names that need
heavier modules (:func:`attach` and :class:`Attachment` bring the Wan model and the upstream
adapter) are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from memrope.attention import attend, rope_on_the_fly
from memrope.cache import CacheContext, MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.rope import RotaryEmbedding, apply_rotary, frame_grid_positions, wan_axis_pairs

if TYPE_CHECKING:
    from memrope.adapters import Attachment, attach

__all__ = [
    "Attachment",
    "CacheContext",
    "MemRoPECache",
    "MemRoPEConfig",
    "RotaryEmbedding",
    "__version__",
    "apply_rotary",
    "attach",
    "attend",
    "frame_grid_positions",
    "rope_on_the_fly",
    "wan_axis_pairs",
]

_ADAPTER_NAMES = ("Attachment", "attach")  # imported from memrope.adapters on first access
_UNKNOWN_VERSION = "0+unknown"


def _version() -> str:
    """The installed distribution's version; for a source tree that is not installed, pyproject's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memrope")
    except PackageNotFoundError:
        pass
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return _UNKNOWN_VERSION
    found = project.get("version") if project.get("name") == "memrope" else None
    return found if isinstance(found, str) else _UNKNOWN_VERSION


__version__ = _version()


def __getattr__(name: str) -> Any:
    """Import a lazy public name on first access and keep it."""
    if name not in _ADAPTER_NAMES:
        raise AttributeError(f"module 'memrope' has no attribute {name!r}")
    from memrope import adapters  # the Wan model and the upstream adapter: not needed by the core

    value = getattr(adapters, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
