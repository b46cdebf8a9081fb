"""Attention over the MemRoPE cache: RoPE applied on the fly, then softmax attention."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from memrope.cache import MemRoPECache

__all__ = [
    "FLASH_DTYPES",
    "FLASH_MAX_HEAD_DIM",
    "AttentionFn",
    "attend",
    "rope_on_the_fly",
]

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256


@functools.lru_cache(maxsize=1)
def _flash_attn_func() -> Callable[..., Any] | None:
    """``flash_attn.flash_attn_func`` when flash-attn is installed, else ``None``."""
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return flash_attn_func  # type: ignore[no-any-return]


def _flash_qualifies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    return (
        query.is_cuda
        and query.dtype in FLASH_DTYPES
        and query.dtype == key.dtype == value.dtype
        and query.shape[-1] <= FLASH_MAX_HEAD_DIM
        and query.stride(-1) == key.stride(-1) == value.stride(-1) == 1
    )


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Softmax attention without mask, scale ``1/sqrt(D)``.

    Args:
        query: ``[B, Lq, H, D]``.
        key, value: ``[B, Lk, H, D]`` (views of the cache are fine; nothing is copied).

    Returns:
        ``[B, Lq, H, D]`` in ``query.dtype``. Uses flash-attn when it is installed and the inputs
        qualify (CUDA, fp16/bf16), else PyTorch SDPA.
    """
    flash = _flash_attn_func() if not torch.compiler.is_compiling() else None
    if flash is not None and _flash_qualifies(query, key, value):
        return flash(query, key, value)  # type: ignore[no-any-return]
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


def rope_on_the_fly(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    cache: MemRoPECache,
    layer: int,
    start_frame: int,
    attention: AttentionFn = attend,
) -> torch.Tensor:
    """MemRoPE self-attention of one chunk for one layer.

    Writes the chunk's un-roped ``key`` / ``value`` into ``cache`` (advancing it on the first call
    of a chunk, rewriting the chunk's slots on later calls), applies RoPE to the queries at their
    cache-slot positions and to the cached keys at slot-relative positions, and attends over every
    filled slot (sink, memory, recent and the chunk itself). The cache's attention hooks (if any, see
    :meth:`~memrope.cache.MemRoPECache.register_attention_hook`) see the RoPE'd query and the
    context just before the kernel runs.

    Args:
        query, key, value: un-roped ``[B, L, H, D]`` of the chunk, ``L = chunk_frames * H' * W'``.
        cache: the cache; ``layer`` selects the layer's state.
        start_frame: global latent frame where the chunk starts.
        attention: kernel ``(q, k, v) -> out`` on ``[B, L, H, D]`` layouts.

    Returns:
        ``[B, L, H, D]`` attention output in ``query.dtype``.
    """
    if query.shape != key.shape or query.dtype != key.dtype:
        raise ValueError(
            f"query must have the shape and dtype of key ({tuple(key.shape)}, {key.dtype}), "
            f"got ({tuple(query.shape)}, {query.dtype})"
        )
    context = cache.update(key, value, layer=layer, start_frame=start_frame)
    roped_query = cache.rope.apply(query, context.query_cos, context.query_sin)
    cache.call_attention_hooks(layer, roped_query, context)
    return attention(roped_query, context.keys, context.values)
