"""Deprecated: the parity helpers moved to :mod:`memrope.testing.parity`.

Importing this module does not warn; taking any of its names does (a ``DeprecationWarning``), except
``cache_config_from_official``, which :mod:`memrope.adapters.upstream` still takes from here (its
replacement is :meth:`memrope.MemRoPEConfig.from_official`). The alias goes in the next minor release.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from memrope.config import MemRoPEConfig

#: Names that now live in :mod:`memrope.testing.parity`; taking one here warns.
_MOVED = (
    "PARITY_DIR_ENV",
    "ParityCall",
    "ParityPipeline",
    "ParitySet",
    "collect_parity_sets",
    "find_parity_sets",
    "load_parity_set",
)
__all__ = ["cache_config_from_official"]
__all__.extend(_MOVED)


def cache_config_from_official(cache: dict[str, Any], chunk_frames: int) -> MemRoPEConfig:
    """Map an official ``cache_config`` to a :class:`MemRoPEConfig` (see :meth:`MemRoPEConfig.from_official`)."""
    return MemRoPEConfig.from_official(cache, chunk_frames)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"memrope.parity is deprecated: import {name} from memrope.testing.parity",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module("memrope.testing.parity"), name)
