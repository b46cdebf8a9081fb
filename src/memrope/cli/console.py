"""The two kinds of line the ``memrope`` command prints on stderr: errors and notes."""

from __future__ import annotations

import sys

__all__ = ["_note", "_print_error"]


def _print_error(message: str) -> None:
    print(f"memrope: error: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(f"memrope: {message}", file=sys.stderr)
