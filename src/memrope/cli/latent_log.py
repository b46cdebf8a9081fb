"""The raw latents log of a video (:class:`LatentLog`) and ``--save-latents`` (:func:`_save_latents`)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import BinaryIO

import torch

from memrope._files import atomic_replace
from memrope.cli.files import COPY_PIECE_BYTES
from memrope.errors import EXIT_FAILURE, CLIError

__all__ = ["COPY_PIECE_BYTES", "SAFETENSORS_DTYPES", "LatentLog", "_save_latents"]

#: safetensors names of the dtypes latents are kept in.
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
}


class LatentLog:
    """Append-only raw latents of one video (one latent frame = ``C*H*W`` elements of ``dtype``).

    A running blake2b of what was appended lets a checkpoint record what the log held (:meth:`hexdigest`)
    at constant cost per chunk; :meth:`rewind_digest` recomputes it for the first frames at resume.

    Args:
        path: the log file.
        frame_shape: ``(C, H, W)``.
        dtype: dtype of the stored latents.
        fresh: start an empty log (truncating any file there); else continue the existing file.

    Raises:
        FileNotFoundError: ``fresh`` is false and the file does not exist.
    """

    def __init__(
        self, path: Path, frame_shape: tuple[int, ...], dtype: torch.dtype, *, fresh: bool = True
    ) -> None:
        self.path = path
        self.frame_shape = frame_shape
        self.dtype = dtype
        self.frame_bytes = math.prod(frame_shape) * torch.empty(0, dtype=dtype).element_size()
        self._file: BinaryIO = open(path, "w+b" if fresh else "r+b")  # noqa: SIM115 (closed in close())
        self._file.seek(0, os.SEEK_END)
        self._hash = hashlib.blake2b(digest_size=32)

    @property
    def frames(self) -> int:
        return os.fstat(self._file.fileno()).st_size // self.frame_bytes

    def rewind_digest(self, frames: int) -> str:
        """blake2b of the first ``frames`` frames (read in pieces); the running hash continues from there."""
        digest = hashlib.blake2b(digest_size=32)
        self._file.seek(0)
        remaining = frames * self.frame_bytes
        while remaining:
            piece = self._file.read(min(remaining, COPY_PIECE_BYTES))
            if not piece:
                break
            digest.update(piece)
            remaining -= len(piece)
        self._file.seek(0, os.SEEK_END)
        self._hash = digest.copy()
        return digest.hexdigest()

    def hexdigest(self) -> str:
        """blake2b of everything appended since the start (or since :meth:`rewind_digest`)."""
        return self._hash.hexdigest()

    def truncate(self, frames: int) -> None:
        self._file.truncate(frames * self.frame_bytes)
        self._file.seek(0, os.SEEK_END)

    def append(self, latents: torch.Tensor) -> None:
        """Append ``[F, C, H, W]`` latents."""
        data = latents.detach().to("cpu", self.dtype).contiguous().view(torch.uint8).numpy().tobytes()
        self._file.write(data)
        self._hash.update(data)

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def read(self, start: int, count: int) -> torch.Tensor:
        """Frames ``start .. start+count-1`` as ``[count, C, H, W]``."""
        self._file.flush()
        self._file.seek(start * self.frame_bytes)
        data = bytearray(self._file.read(count * self.frame_bytes))
        self._file.seek(0, os.SEEK_END)
        if len(data) != count * self.frame_bytes:
            raise CLIError(f"the latents log {self.path} is shorter than expected", EXIT_FAILURE)
        flat = torch.frombuffer(data, dtype=torch.uint8).view(self.dtype)
        return flat.view(count, *self.frame_shape).clone()

    def copy_to(self, file: BinaryIO, frames: int, piece_bytes: int = COPY_PIECE_BYTES) -> None:
        """Write the raw bytes of the first ``frames`` frames to ``file``, ``piece_bytes`` at a time."""
        self._file.flush()
        self._file.seek(0)
        remaining = frames * self.frame_bytes
        while remaining:
            piece = self._file.read(min(remaining, piece_bytes))
            if not piece:
                raise CLIError(f"the latents log {self.path} is shorter than expected", EXIT_FAILURE)
            file.write(piece)
            remaining -= len(piece)
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        self._file.close()


def _save_latents(log: LatentLog, frames: int, path: Path, piece_bytes: int = COPY_PIECE_BYTES) -> None:
    """Write the first ``frames`` frames of ``log`` to ``path`` as safetensors ``{"latents": [1, F, C, H, W]}``.

    The file is assembled by hand (header, then the log's raw bytes copied ``piece_bytes`` at a time),
    so memory stays bounded whatever the length; the log holds exactly the little-endian, C-order bytes
    safetensors stores. Written under a temporary name and moved into place.
    """
    nbytes = frames * log.frame_bytes
    header = {
        "__metadata__": {"format": "memrope.latents"},
        "latents": {
            "dtype": SAFETENSORS_DTYPES[log.dtype],
            "shape": [1, frames, *log.frame_shape],
            "data_offsets": [0, nbytes],
        },
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_replace(path) as temporary, temporary.open("wb") as file:
        file.write(len(encoded).to_bytes(8, "little"))
        file.write(encoded)
        log.copy_to(file, frames, piece_bytes)
