"""Adapters that make foreign video DiT code generate with a :class:`~memrope.MemRoPECache`.

:func:`attach` hands an object to the registered adapter that recognises it (see
:mod:`memrope.adapters.registry`; a new adapter is one module that calls :func:`register_adapter`).
Built in, ``upstream`` (:mod:`memrope.adapters.upstream`): a Self-Forcing / LongLive /
official-MemRoPE causal inference pipeline, its ``WanDiffusionWrapper`` generator, or the causal Wan
model itself (PEFT-wrapped or not); it returns an :class:`Attachment` that undoes everything on
:meth:`Attachment.remove` or on leaving a ``with`` block. The official MemRoPE pipeline's own cache
settings are used unless overridden; pipeline features not supported yet are refused with a message
naming them. And ``diffusers`` (:mod:`memrope.adapters.diffusers_wan`): a stock diffusers
``WanTransformer3DModel``, recognised without importing diffusers, returning a
:class:`~memrope.adapters.diffusers_wan.DiffusersAttachment` that is also the model memrope's
pipeline drives.
"""

from memrope.adapters.registry import (
    Adapter,
    AttachmentLike,
    attach,
    available_adapters,
    find_adapter,
    get_adapter,
    register_adapter,
    unregister_adapter,
)
from memrope.adapters.upstream import Attachment

from memrope.adapters import diffusers_wan as _diffusers_wan  # noqa: F401  # isort: skip (registers "diffusers")

__all__ = [
    "Adapter",
    "Attachment",
    "AttachmentLike",
    "attach",
    "available_adapters",
    "find_adapter",
    "get_adapter",
    "register_adapter",
    "unregister_adapter",
]
