"""How ``memrope generate`` copies files (atomic replacement lives in :mod:`memrope._files`)."""

from __future__ import annotations

__all__ = ["COPY_PIECE_BYTES"]

#: ``--save-latents`` copies the latents log into the safetensors file in pieces of this many bytes.
COPY_PIECE_BYTES = 16 * 2**20
