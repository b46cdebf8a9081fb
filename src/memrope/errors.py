"""Exceptions memrope raises for failures that are not a bad argument (a leaf module: imports nothing)."""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CLIError", "NonFiniteError"]


class NonFiniteError(RuntimeError):
    """A tensor that must be finite holds NaN or infinity (weights, text embeddings, a chunk, a memory).

    The message names the tensor and where it came from; nothing computed from it is kept.
    """


# Exit codes of the ``memrope`` command line (``memrope.cli`` and the commands it registers).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A problem to report on stderr as ``memrope: error: <message>`` with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
