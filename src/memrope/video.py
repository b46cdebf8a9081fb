"""Incremental mp4 writing: frames go to ffmpeg as they are decoded, so memory stays constant.

Needs the ``video`` extra (``imageio`` with its ``imageio-ffmpeg`` plugin, which brings an ffmpeg
binary). The file is encoded next to its target under a temporary name (``.<name>.<8 hex>.partial.mp4``)
and moved into place when the writer is done, so an existing file is replaced only by a finished,
playable video; a failure (an error, a full disk) removes the temporary file and leaves the target
as it was. :meth:`Mp4Writer.partial_files` finds the temporary files a killed process left behind.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import Self

from memrope._files import move_into_place
from memrope.errors import NonFiniteError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Mp4Writer", "to_uint8"]


def to_uint8(frames: Tensor) -> Tensor:
    """Decoder frames ``[..., 3, H, W]`` in ``[-1, 1]`` -> CPU ``uint8`` ``[..., H, W, 3]`` (rounded, clamped).

    Raises:
        NonFiniteError: a frame holds NaN or infinity (it would silently become black or white).
    """
    if frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected frames [..., 3, H, W], got {tuple(frames.shape)}")
    if not bool(torch.isfinite(frames).all()):
        raise NonFiniteError(f"decoded frames {tuple(frames.shape)} hold NaN or infinity")
    pixels = (frames.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return pixels.round_().to(torch.uint8).movedim(-3, -1).cpu()


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) back until the block is done, then raise ``KeyboardInterrupt``.

    A ``KeyboardInterrupt`` inside imageio-ffmpeg's frame writer kills ffmpeg, which leaves an mp4
    without its index; deferring it keeps frames whole and lets the file be finalised. Only the
    main thread with Python's default SIGINT handler is affected.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _import_imageio() -> Any:
    message = "writing mp4 needs imageio and imageio-ffmpeg: pip install 'memrope[video]'"
    try:
        import imageio.v2 as imageio
    except ImportError as error:
        raise ImportError(message) from error
    if importlib.util.find_spec("imageio_ffmpeg") is None:  # imageio's FFMPEG format runs through it
        raise ImportError(message)
    return imageio


class Mp4Writer:
    """Context manager appending ``uint8`` frames ``[T, H, W, 3]`` to an H.264 mp4 at ``path``.

    ``H`` and ``W`` should be even (``yuv420p``). When the ``with`` block ends normally or by
    ``KeyboardInterrupt`` (a Ctrl-C keeps what was made), the frames written so far are finalised into
    a playable file that then replaces ``path``; any other exception ends it with :meth:`abort`:
    the temporary file is removed and ``path`` is left as it was. With no frames written ``path`` is
    left untouched. A Ctrl-C that arrives during :meth:`write` or :meth:`close` takes effect when that
    call is done. A process killed outright leaves ``path`` untouched and a ``.<name>.*.partial.mp4``
    file beside it (see :meth:`partial_files`).

    Raises:
        OSError: (from :meth:`write` / :meth:`close`) ffmpeg could not write the file (disk full,
            folder not writable); the message is one line naming ``path``, and ``path`` is untouched.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 16, *, quality: float = 8) -> None:
        self._imageio = _import_imageio()
        self.path = Path(path)
        self.fps = fps
        self.quality = quality
        self.frames_written = 0
        self._frame_shape: tuple[int, ...] | None = None
        self._writer: Any = None
        self._closed = False
        self.committed = False  # whether close() moved a finished video to path
        self._temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.partial.mp4")

    @staticmethod
    def partial_files(path: str | os.PathLike[str]) -> list[Path]:
        """The temporary files of writers of ``path`` (``.<name>.<8 hex>.partial.mp4`` beside it)."""
        target = Path(path)
        pattern = re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]{{8}}\.partial\.mp4")
        try:
            names = os.listdir(target.parent)
        except OSError:
            return []
        return sorted(target.with_name(name) for name in names if pattern.fullmatch(name))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()
        else:
            self.abort()

    def write(self, frames: Tensor | np.ndarray) -> None:
        """Append ``uint8`` frames ``[T, H, W, 3]`` (a tensor on any device, or an array)."""
        if self._closed:
            raise RuntimeError(f"{self.path} is already closed")
        import numpy

        array = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else numpy.asarray(frames)
        if array.dtype != numpy.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {array.dtype} {array.shape}")
        if self._frame_shape is None:
            self._frame_shape = array.shape[1:]
            try:
                self._writer = self._imageio.get_writer(
                    self._temporary,
                    format="FFMPEG",
                    mode="I",
                    fps=self.fps,
                    codec="libx264",
                    quality=self.quality,
                    macro_block_size=2,
                    ffmpeg_log_level="quiet",
                )
            except Exception as error:  # noqa: BLE001 (imageio raises several kinds; all mean "cannot write")
                self.abort()
                raise self._write_error(error) from None
        elif array.shape[1:] != self._frame_shape:
            raise ValueError(f"frame size changed from {self._frame_shape} to {array.shape[1:]}")
        with _interrupts_deferred():
            try:
                for frame in array:
                    self._writer.append_data(frame)
                    self.frames_written += 1
            except Exception as error:  # noqa: BLE001 (ffmpeg died: a broken pipe, a full disk)
                self.abort()
                raise self._write_error(error) from None

    def close(self) -> None:
        """Finish encoding and move the video to ``path`` (nothing to move without frames)."""
        if self._closed:
            return
        self._closed = True
        with _interrupts_deferred():
            try:
                if self._writer is not None:
                    self._writer.close()
            except BaseException as error:
                self._temporary.unlink(missing_ok=True)
                if isinstance(error, Exception):
                    raise self._write_error(error) from None
                raise
            if self.frames_written == 0:
                self._temporary.unlink(missing_ok=True)
            else:
                move_into_place(self._temporary, self.path)
                self.committed = True

    def abort(self) -> None:
        """Stop encoding and remove the temporary file; ``path`` is left as it was."""
        if self._closed and not self._temporary.exists():
            return
        self._closed = True
        writer, self._writer = self._writer, None
        with _interrupts_deferred():
            try:
                if writer is not None:
                    writer.close()
            except Exception:  # noqa: BLE001,S110 (ffmpeg already failed or the file is discarded anyway)
                pass
            finally:
                self._temporary.unlink(missing_ok=True)

    def _write_error(self, error: Exception) -> OSError:
        """A one-line ``OSError`` saying why ``path`` could not be written (no ffmpeg dump)."""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        folder = self.path.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            hint = f"check that the folder {folder} exists and is writable"
        else:
            hint = f"{free / 2**20:.1f} MiB free in {folder}; check free space and permissions there"
        return OSError(f"cannot write the video {self.path} ({reason}); {hint}")
