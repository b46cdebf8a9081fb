"""Helpers for testing integrations without the upstream repositories.

:mod:`memrope.testing.upstream` holds small stand-ins of the Self-Forcing / LongLive / official
MemRoPE model, wrapper and pipeline classes (same module tree, call signatures and cache-list
protocol), so code that uses :func:`memrope.attach` can be tested on a CPU in seconds;
:mod:`memrope.testing.parity` reads the parity vectors of the official implementation.
"""

__all__: list[str] = []
