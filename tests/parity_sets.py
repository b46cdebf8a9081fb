"""Which parity sets the parity tests run: the bundled ones plus those of ``$MEMROPE_PARITY_DIR``.

The sets in ``tests/data/parity`` (vectors of the official implementation) always run; a directory
named by ``$MEMROPE_PARITY_DIR`` adds its sets, and its copy of a bundled name replaces ours.
"""

from __future__ import annotations

import os
from pathlib import Path

from memrope.testing.parity import PARITY_DIR_ENV, collect_parity_sets

BUNDLED_PARITY_DIR = Path(__file__).resolve().parent / "data" / "parity"
EXTRA_PARITY_DIR = os.environ.get(PARITY_DIR_ENV) or None
PARITY_SETS: list[Path] = collect_parity_sets(BUNDLED_PARITY_DIR, EXTRA_PARITY_DIR)
PARITY_IDS: list[str] = [path.stem for path in PARITY_SETS]
