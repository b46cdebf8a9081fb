"""Incremental mp4 writing: frames go to ffmpeg as they are decoded, so memory stays constant.

Needs the ``video`` extra (``imageio`` with its ``imageio-ffmpeg`` plugin, which brings an ffmpeg
binary). The file is encoded next to its target under a temporary name and moved into place when the
writer closes, so an existing file is replaced only by a finished, playable video.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
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

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Mp4Writer", "to_uint8"]


def to_uint8(frames: Tensor) -> Tensor:
    """Decoder frames ``[..., 3, H, W]`` in ``[-1, 1]`` -> CPU ``uint8`` ``[..., H, W, 3]`` (rounded, clamped)."""
    if frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected frames [..., 3, H, W], got {tuple(frames.shape)}")
    pixels = (frames.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return pixels.round_().to(torch.uint8).movedim(-3, -1).cpu()


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) back until the block is done, then raise ``KeyboardInterrupt``.

    A ``KeyboardInterrupt`` inside imageio-ffmpeg's frame writer kills ffmpeg, which leaves an mp4
    without its index; deferring it keeps frames whole and lets the file be finalised. Only the
    main thread with Python's default SIGINT handler is affected.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
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

    ``H`` and ``W`` should be even (``yuv420p``). Whatever ends the ``with`` block (normal exit,
    ``KeyboardInterrupt``, an error), the frames written so far are finalised into a playable file
    that then replaces ``path``; with no frames written ``path`` is left untouched. A Ctrl-C that
    arrives during :meth:`write` or :meth:`close` takes effect when that call is done. A process
    killed outright leaves ``path`` untouched and a ``.<name>.*.partial.mp4`` file beside it.
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
        self._temporary = self.path.with_name(f".{self.path.stem}.{secrets.token_hex(4)}.partial.mp4")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
            self._writer = self._imageio.get_writer(
                self._temporary, format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                quality=self.quality, macro_block_size=2,
            )
        elif array.shape[1:] != self._frame_shape:
            raise ValueError(f"frame size changed from {self._frame_shape} to {array.shape[1:]}")
        with _interrupts_deferred():
            for frame in array:
                self._writer.append_data(frame)
                self.frames_written += 1

    def close(self) -> None:
        """Finish encoding and move the video to ``path`` (nothing to move without frames)."""
        if self._closed:
            return
        self._closed = True
        with _interrupts_deferred():
            try:
                if self._writer is not None:
                    self._writer.close()
            except BaseException:
                self._temporary.unlink(missing_ok=True)
                raise
            if self.frames_written == 0:
                self._temporary.unlink(missing_ok=True)
            else:
                os.replace(self._temporary, self.path)
