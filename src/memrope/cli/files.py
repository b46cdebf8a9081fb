"""Writing files in place of others: an atomic text write and the mode a new file gets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["COPY_PIECE_BYTES", "_atomic_write_text", "_default_mode"]

#: ``--save-latents`` copies the latents log into the safetensors file in pieces of this many bytes.
COPY_PIECE_BYTES = 16 * 2**20


def _default_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp makes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write_text(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
