"""Exceptions memrope raises for failures that are not a bad argument (a leaf module: imports nothing)."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(RuntimeError):
    """A tensor that must be finite holds NaN or infinity (weights, text embeddings, a chunk, a memory).

    The message names the tensor and where it came from; nothing computed from it is kept.
    """
