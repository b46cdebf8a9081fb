"""Drop-in adapters that make upstream video DiT code generate with a :class:`~memrope.MemRoPECache`.

:func:`attach` takes a Self-Forcing / LongLive / official-MemRoPE causal inference pipeline, its
``WanDiffusionWrapper`` generator, or the causal Wan model itself (PEFT-wrapped or not), and returns
an :class:`Attachment` that undoes everything on :meth:`Attachment.remove` or on leaving a ``with``
block. The official MemRoPE pipeline's own cache settings are used unless overridden; pipeline
features not supported yet are refused with a message naming them. See :mod:`memrope.adapters.upstream`.
"""

from memrope.adapters.upstream import Attachment, attach

__all__ = ["Attachment", "attach"]
