"""``python -m memrope.cli`` (and ``torchrun -m memrope.cli``): the ``memrope`` command."""

from __future__ import annotations

import sys

from memrope.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
