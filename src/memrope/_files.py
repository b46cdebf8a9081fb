"""Replacing files atomically: write under a temporary name in the same folder, then ``os.replace``.

A reader of ``path`` sees the old file or the new one, never a half-written one, and a failed write
leaves ``path`` as it was. The new file gets the mode any new file gets under the current umask
(``tempfile.mkstemp`` alone would leave it ``0600``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_replace", "atomic_write_text", "default_file_mode", "move_into_place", "swap_folder"]


def default_file_mode() -> int:
    """Permission bits of a newly created file under the current umask (``0o666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def move_into_place(temporary: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Give ``temporary`` the default file mode and move it onto ``path`` (atomic on one file system)."""
    os.chmod(temporary, default_file_mode())
    os.replace(temporary, path)


@contextmanager
def atomic_replace(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary file beside ``path``; on a clean exit it replaces ``path``.

    The caller writes the new content to the yielded path (by name: it is closed). If the block
    raises, the temporary file is removed and ``path`` is untouched. The folder of ``path`` must exist.
    """
    target = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        move_into_place(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8)."""
    with atomic_replace(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def swap_folder(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the folder ``staging`` onto ``target`` (same file system).

    An existing ``target`` is moved aside first and removed once ``staging`` is in place; if that
    move fails, ``target`` is put back. A reader sees the old folder or the new one, never a mix.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    aside.rmdir()
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
