"""The cache-policy interface: what a bounded cache does with the frames it has to evict.

A :class:`~memrope.cache.MemRoPECache` owns the buffers and the per-call path (write, RoPE workspace,
shift); a policy decides what eviction means. The layout of every bounded cache is::

    slot:  0 .. sink-1 | sink .. sink+M-1            | ...            | last chunk_frames slots
           sink        | the policy's M memory slots  | recent frames  | current chunk

When a chunk does not fit, the cache hands the policy the oldest ``n`` frames after the memory slots
(:meth:`CachePolicy.evict`), writes what the policy returns into its memory slots, shifts the recent
frames left and appends the chunk. A policy with no memory slots simply forgets the frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from memrope.config import MemRoPEConfig

__all__ = ["CacheGeometry", "CachePolicy", "MemorySlot"]

MemorySlot = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class CacheGeometry:
    """Sizes of the tensors a policy sees: ``[batch_size, tokens, num_heads, head_dim]`` per layer.

    ``frame_seqlen`` tokens make one latent frame; ``memory_dtype`` is what the policy keeps its
    state in (``MemRoPEConfig.memory_dtype``, or the cache dtype when that is ``None``).
    """

    batch_size: int
    num_heads: int
    head_dim: int
    frame_seqlen: int
    dtype: torch.dtype
    memory_dtype: torch.dtype


class CachePolicy:
    """Base class of cache policies; subclass it and decorate with :func:`~memrope.policies.register_policy`.

    Class attributes:
        name: the registry name, ``MemRoPEConfig(policy=name)``.
        bounded: ``False`` for a cache that grows with the video (every frame kept at its global
            position, up to ``max_positions``); such a policy never evicts.
        memory_slots: roles of the slots right after the sink that hold the policy's memory once
            the first eviction happened (``"memrope"``: ``("long", "short")``); ``()`` for none.
            The names show in :meth:`MemRoPECache.slot_layout` and as attention roles.

    An instance exists per cache (``policy(config, geometry)``); per-layer state lives in the dict
    the cache passes to :meth:`evict` (one per layer, saved under ``layers.{i}.{name}``).
    """

    name: ClassVar[str] = ""
    bounded: ClassVar[bool] = True
    memory_slots: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MemRoPEConfig, geometry: CacheGeometry) -> None:
        self.config = config
        self.geometry = geometry

    @classmethod
    def check_config(cls, config: MemRoPEConfig) -> None:
        """Raise ``ValueError`` for settings this policy cannot run (called by ``MemRoPEConfig``).

        The default asks a bounded window to hold the sink, the memory slots and one chunk, and to
        fit the RoPE table. Override to add checks (call ``super()``) or warnings.
        """
        if not cls.bounded:
            return
        minimum = config.sink_frames + len(cls.memory_slots) + config.chunk_frames
        if config.cache_frames < minimum:
            memory = f" + {len(cls.memory_slots)} memory frames" if cls.memory_slots else ""
            raise ValueError(
                f"cache_frames must be >= sink_frames{memory} + chunk_frames = {minimum} for policy "
                f"{cls.name!r}, got cache_frames={config.cache_frames}"
            )
        if config.cache_frames > config.max_positions:
            raise ValueError(
                f"cache_frames must be <= max_positions={config.max_positions}, got {config.cache_frames}"
            )

    def memory_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the per-layer state tensors once the policy has memory (``{}``: none).

        :meth:`MemRoPECache.load_state_dict` checks a saved state against these. The names
        ``keys``, ``values``, ``counters`` and ``slot_frames`` are the cache's own.
        """
        return {}

    def evict(
        self, memory: dict[str, torch.Tensor], keys: torch.Tensor, values: torch.Tensor
    ) -> list[MemorySlot]:
        """Take the evicted frames of one layer; return what each memory slot must hold.

        Args:
            memory: the layer's policy state (empty before the first eviction); update it in place
                or fill it with tensors named as in :meth:`memory_shapes`.
            keys, values: the evicted frames, un-roped, ``[B, n * frame_seqlen, H, D]`` (views of the
                cache: read them here, do not keep them).

        Returns:
            one ``(keys, values)`` pair per memory slot, each broadcastable to ``[B, frame_seqlen,
            H, D]``; the default (no memory) forgets the frames and returns ``[]``.
        """
        return []
