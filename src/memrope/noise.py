"""Initial noise of a long video, drawn lazily with memory constant in the video length.

The official inference code (docs/design.md §10) draws the whole initial noise ``randn([B, F, C, H, W])`` from
one CPU ``torch.Generator`` first, then every intermediate noise from the same generator. Holding
that tensor costs ``B*F*C*H*W`` values: ~2.9 GB in bf16 for a 1-hour video (F = 14400, 16x60x104).

:class:`InitialNoise` gives the same values without holding them. It relies on how torch's CPU normal
fill uses the generator: it draws one uniform per element in order, then transforms them in blocks of
16 elements. When every draw has a multiple of 16 elements, drawing a tensor in consecutive pieces
therefore gives exactly the values of drawing it at once, and leaves the generator in the same state.
So with ``CHW = C*H*W`` a multiple of 16:

* batch item ``b`` of the full tensor is the ``F*CHW`` values that follow the first ``b*F*CHW``, and
  the frames of an item can be drawn chunk by chunk from a generator positioned at its next frame;
* the generator after the full draw is the start generator advanced by ``B*F*CHW`` values.

Positioning means drawing and discarding values (a generator cannot skip ahead), in bounded pieces:
a one-off cost at the start of a run of about 4 s per 1.4e9 values (one batch item of a 1-hour video;
measured ~375 M values/s on one Xeon core, float32 or bfloat16), with a 64 MiB buffer. Drawing the
full tensor eagerly takes longer (~175-255 M values/s) and holds it.

When ``CHW`` is not a multiple of 16 the identity does not hold (torch redraws the last 16 values of
a draw whose size is not a multiple of 16), so :class:`InitialNoise` falls back to drawing the full
tensor at once and holding it, as the official code does.

Bounds: positioning time grows with ``B*F*CHW`` (a generator cannot jump ahead), so
:class:`InitialNoise` refuses more than :data:`MAX_INITIAL_NOISE_VALUES` (2**36, about 6.9e10 values:
a few minutes of drawing; a 24-hour 480x832 video is 3.4e10) instead of starting a run that would
spend hours before its first frame. Positioning runs in Python-level pieces, so Ctrl-C stops it.
Seeds are unsigned 64-bit: :func:`check_seed` accepts ``0 <= seed <= 2**64 - 1`` and
:func:`seeded_generator` makes the CPU generator of a seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from memrope._dtypes import dtype_name, parse_dtype

__all__ = [
    "MAX_INITIAL_NOISE_VALUES",
    "MAX_SEED",
    "InitialNoise",
    "check_seed",
    "discard",
    "seeded_generator",
]

#: Largest temporary buffer used to discard values (bytes).
DISCARD_PIECE_BYTES = 64 * 2**20
#: Eagerly drawn initial noise bigger than this triggers a warning (bytes).
EAGER_WARN_BYTES = 256 * 2**20
#: torch draws normal values in blocks of this many elements.
NORMAL_BLOCK = 16
#: Most values (``B*F*C*H*W``) an :class:`InitialNoise` draws or positions past (a few minutes).
MAX_INITIAL_NOISE_VALUES = 2**36
#: Largest seed (torch generators take unsigned 64-bit seeds).
MAX_SEED = 2**64 - 1

_LAZY = "lazy"
_EAGER = "eager"
_DRAWS_PER_VALUE: dict[torch.dtype, int | None] = {}


def _draws_per_value(dtype: torch.dtype) -> int | None:
    """32-bit generator draws one ``randn`` value of ``dtype`` consumes, or ``None`` if unknown.

    Checked once per dtype against ``torch.randn`` itself (a few microseconds), so a torch version
    that consumes the generator differently falls back to discarding with ``randn``.
    """
    if dtype not in _DRAWS_PER_VALUE:
        found = None
        count = 5 * NORMAL_BLOCK
        reference = torch.Generator("cpu").manual_seed(12345)
        torch.randn(count, generator=reference, dtype=dtype)
        for draws in (1, 2):
            candidate = torch.Generator("cpu").manual_seed(12345)
            torch.empty(count * draws, dtype=torch.int32).random_(generator=candidate)
            if torch.equal(candidate.get_state(), reference.get_state()):
                found = draws
                break
        _DRAWS_PER_VALUE[dtype] = found
    return _DRAWS_PER_VALUE[dtype]


def discard(
    generator: torch.Generator, count: int, dtype: torch.dtype, *, piece_bytes: int = DISCARD_PIECE_BYTES
) -> None:
    """Advance ``generator`` as ``torch.randn(count, generator=generator, dtype=dtype)`` would.

    ``count`` must be a multiple of 16. The values are drawn in pieces of at most ``piece_bytes``
    and thrown away, so memory stays bounded whatever ``count`` is. When the cheaper raw 32-bit draws
    are known to consume the generator like ``randn`` (checked at run time), those are used (about
    1.2x faster than ``randn`` for float32 and 1.8x for bfloat16); otherwise ``randn`` itself in pieces of a multiple
    of 16 values.
    """
    if count < 0 or count % NORMAL_BLOCK:
        raise ValueError(f"count must be a non-negative multiple of {NORMAL_BLOCK}, got {count}")
    if count == 0:
        return
    draws = _draws_per_value(dtype)
    if draws is not None:
        buffer_dtype, total = torch.int32, count * draws
    else:
        buffer_dtype, total = dtype, count
    itemsize = torch.empty((), dtype=buffer_dtype).element_size()
    piece = max(NORMAL_BLOCK, piece_bytes // itemsize // NORMAL_BLOCK * NORMAL_BLOCK)
    buffer = torch.empty(min(piece, total), dtype=buffer_dtype)
    while total:
        part = buffer[: min(total, buffer.numel())]
        if draws is not None:
            part.random_(generator=generator)
        else:
            part.normal_(generator=generator)
        total -= part.numel()


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is an int in ``[0, 2**64 - 1]`` (what a torch generator takes unchanged).

    Raises:
        TypeError: ``seed`` is not an int (``bool`` included).
        ValueError: ``seed`` is outside ``[0, 2**64 - 1]``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int in [0, 2**64 - 1], got {type(seed).__name__} {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"{name} must be in [0, 2**64 - 1] = [0, {MAX_SEED}] (torch generators take unsigned 64-bit "
            f"seeds), got {seed}"
        )
    return seed


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (checked by :func:`check_seed`)."""
    return torch.Generator("cpu").manual_seed(check_seed(seed))


def _clone_generator(generator: torch.Generator) -> torch.Generator:
    clone = torch.Generator("cpu")
    clone.set_state(generator.get_state())
    return clone


class InitialNoise:
    """The initial noise ``randn([B, F, C, H, W], generator=generator, dtype=dtype)``, frame by frame.

    Creating it advances ``generator`` past the whole initial noise, exactly as the full draw would,
    so the draws that follow (the intermediate noises) are unchanged. :meth:`take` then returns the
    next frames of every batch item, bit-identical to the corresponding slice of the full draw.

    Lazy mode (``C*H*W`` a multiple of 16, see the module docstring): one generator per batch item,
    positioned at the item's next unused frame; memory and :meth:`state_dict` are constant in ``F``.
    Positioning costs drawing and discarding ``B*F*C*H*W`` values once, in pieces of at most
    ``piece_bytes``.

    Eager mode (``C*H*W`` not a multiple of 16, or :meth:`from_tensor`): the full tensor is drawn at
    once and held, and :meth:`state_dict` holds the frames not used yet, so both grow with ``F``.
    A :class:`UserWarning` says so when the drawn tensor exceeds ``EAGER_WARN_BYTES`` (256 MiB).

    Either mode refuses ``B*F*C*H*W`` above :data:`MAX_INITIAL_NOISE_VALUES` (a ``ValueError`` naming
    the longest ``num_frames`` allowed) rather than draw for hours before the first frame.

    Args:
        generator: CPU generator at the state the full draw would start from; it is advanced.
        batch: ``B``.
        num_frames: ``F``.
        frame_shape: ``(C, H, W)``.
        dtype: dtype of the draw (a floating dtype).
        piece_bytes: largest temporary buffer used while discarding.
    """

    def __init__(
        self,
        generator: torch.Generator,
        batch: int,
        num_frames: int,
        frame_shape: Sequence[int],
        dtype: torch.dtype = torch.float32,
        *,
        piece_bytes: int = DISCARD_PIECE_BYTES,
    ) -> None:
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got {generator!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self._set_layout(batch, num_frames, frame_shape, dtype)
        values = self.batch * self.num_frames * self.frame_numel
        if values > MAX_INITIAL_NOISE_VALUES:
            longest = MAX_INITIAL_NOISE_VALUES // (self.batch * self.frame_numel)
            raise ValueError(
                f"num_frames={num_frames} is too long: its initial noise is {values:.3g} values "
                f"(batch {self.batch} x {num_frames} frames x {self.frame_numel}), more than the "
                f"{MAX_INITIAL_NOISE_VALUES:.3g} (2**36) drawn before the first frame (minutes of drawing; "
                f"more would take hours); use num_frames <= {longest} for this batch and frame shape"
            )
        self.frames_used = 0
        self._generators: list[torch.Generator] = []
        self._remaining: torch.Tensor | None = None
        if self.frame_numel % NORMAL_BLOCK == 0:
            item_values = num_frames * self.frame_numel
            walker = _clone_generator(generator)
            for _ in range(batch):
                self._generators.append(_clone_generator(walker))
                discard(walker, item_values, dtype, piece_bytes=piece_bytes)
            generator.set_state(walker.get_state())
        else:
            size = batch * num_frames * self.frame_numel * torch.empty((), dtype=dtype).element_size()
            if size > EAGER_WARN_BYTES:
                warnings.warn(
                    f"initial noise drawn eagerly ({size / 2**30:.2f} GiB held for the whole run and "
                    f"kept in checkpoints): C*H*W = {self.frame_numel} is not a multiple of "
                    f"{NORMAL_BLOCK}, so it cannot be drawn frame by frame bit-identically",
                    stacklevel=2,
                )
            self._remaining = torch.randn(
                (batch, num_frames, *self.frame_shape), generator=generator, dtype=dtype
            )

    def _set_layout(
        self, batch: int, num_frames: int, frame_shape: Sequence[int], dtype: torch.dtype
    ) -> None:
        values = (batch, num_frames, *frame_shape)
        if len(values) != 5 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values):
            raise ValueError(
                "initial noise needs positive ints batch, num_frames and frame_shape (C, H, W), got "
                f"batch={batch!r}, num_frames={num_frames!r}, frame_shape={tuple(frame_shape)!r}"
            )
        self.batch = int(batch)
        self.num_frames = int(num_frames)
        channels, height, width = (int(n) for n in frame_shape)
        self.frame_shape: tuple[int, int, int] = (channels, height, width)
        self.frame_numel = math.prod(self.frame_shape)
        self.dtype = dtype

    @classmethod
    def from_tensor(cls, noise: torch.Tensor) -> InitialNoise:
        """Eager initial noise from a given tensor ``[B, F, C, H, W]`` (held as is, not copied)."""
        if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim != 5:
            raise ValueError(f"noise must be a floating tensor [B, F, C, H, W], got {noise!r:.80}")
        self = cls.__new__(cls)
        self._set_layout(noise.shape[0], noise.shape[1], tuple(noise.shape[2:]), noise.dtype)
        self.frames_used = 0
        self._generators = []
        self._remaining = noise
        return self

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> InitialNoise:
        """Rebuild initial noise from :meth:`state_dict` (without drawing anything)."""
        self = cls.__new__(cls)
        self.load_state_dict(state, check_layout=False)
        return self

    # ------------------------------------------------------------------ properties
    @property
    def lazy(self) -> bool:
        """Whether frames are drawn on demand (memory constant in ``num_frames``)."""
        return self._remaining is None

    @property
    def frames_left(self) -> int:
        return self.num_frames - self.frames_used

    @property
    def device(self) -> torch.device:
        """Where :meth:`take` returns its frames (the CPU, or a given tensor's device)."""
        return torch.device("cpu") if self._remaining is None else self._remaining.device

    # ------------------------------------------------------------------ drawing
    def take(self, frames: int) -> torch.Tensor:
        """The next ``frames`` frames of every batch item: ``[B, frames, C, H, W]``.

        Equal to ``full[:, used : used + frames]`` of the full draw, where ``used`` is
        :attr:`frames_used` before the call.

        Raises:
            ValueError: when fewer than ``frames`` frames are left.
        """
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= self.frames_left:
            raise ValueError(
                f"take() needs 1 <= frames <= {self.frames_left} (frames left of {self.num_frames}), "
                f"got {frames!r}"
            )
        if self._remaining is not None:
            taken = self._remaining[:, :frames]
            self._remaining = self._remaining[:, frames:]
        else:
            taken = torch.empty((self.batch, frames, *self.frame_shape), dtype=self.dtype)
            for item, generator in enumerate(self._generators):
                taken[item].normal_(generator=generator)
        self.frames_used += frames
        return taken

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (tensors are copies).

        Returns:
            ``{"mode": "lazy" | "eager", "num_frames", "frames_used", "frame_shape": [C, H, W],
            "dtype": "float32" | ...}`` plus, lazy, ``"generator_states"``: uint8 ``[B, S]`` (each
            item's generator state, a few KB) or, eager, ``"remaining"``: ``[B, F - frames_used, C,
            H, W]`` (the frames not used yet).
        """
        state: dict[str, Any] = {
            "mode": _LAZY if self.lazy else _EAGER,
            "num_frames": self.num_frames,
            "frames_used": self.frames_used,
            "frame_shape": list(self.frame_shape),
            "dtype": dtype_name(self.dtype),
        }
        if self._remaining is None:
            state["generator_states"] = torch.stack([g.get_state() for g in self._generators])
        else:
            state["remaining"] = self._remaining.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Any], *, check_layout: bool = True) -> None:
        """Continue from :meth:`state_dict`.

        With ``check_layout`` (default) the state must describe noise of this object's batch,
        ``num_frames``, frame shape and dtype.

        Raises:
            ValueError: on a malformed state or, with ``check_layout``, another layout.
        """
        if not isinstance(state, dict):
            raise TypeError(f"initial noise state must be a dict, got {type(state).__name__}")
        mode = state.get("mode")
        tensor_name = {_LAZY: "generator_states", _EAGER: "remaining"}.get(mode)  # type: ignore[arg-type]
        if tensor_name is None:
            raise ValueError(f"initial noise state: mode must be 'lazy' or 'eager', got {mode!r}")
        tensor: Any = state.get(tensor_name)
        num_frames: Any = state.get("num_frames")
        used: Any = state.get("frames_used")
        frame_shape: Any = state.get("frame_shape")
        dtype = parse_dtype(state.get("dtype"), "initial noise state: dtype")
        problem = None
        if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
            problem = f"{mode} mode needs the tensor {tensor_name!r}, got {tensor!r:.60}"
        elif not isinstance(frame_shape, (list, tuple)) or len(frame_shape) != 3:
            problem = f"frame_shape must be [C, H, W], got {frame_shape!r}"
        elif any(isinstance(n, bool) or not isinstance(n, int) for n in (used, num_frames)):
            problem = f"num_frames and frames_used must be ints, got {num_frames!r}, {used!r}"
        if problem is not None:
            raise ValueError(f"initial noise state: {problem}")
        batch = tensor.shape[0]
        layout = (batch, num_frames, tuple(frame_shape), dtype)
        if check_layout and layout != (self.batch, self.num_frames, self.frame_shape, self.dtype):
            raise ValueError(
                f"initial noise state is for (batch, num_frames, frame_shape, dtype) = {layout}, not "
                f"{(self.batch, self.num_frames, self.frame_shape, self.dtype)}"
            )
        new = InitialNoise.__new__(InitialNoise)
        new._set_layout(batch, num_frames, frame_shape, dtype)
        if not 0 <= used <= new.num_frames:
            raise ValueError(f"initial noise state: frames_used must be in [0, {num_frames}], got {used}")
        generators: list[torch.Generator] = []
        remaining = None
        if mode == _LAZY:
            if new.frame_numel % NORMAL_BLOCK:
                raise ValueError(
                    f"initial noise state: lazy mode needs C*H*W a multiple of {NORMAL_BLOCK}, "
                    f"got frame_shape {new.frame_shape}"
                )
            if tensor.ndim != 2 or tensor.dtype != torch.uint8:
                raise ValueError(
                    "initial noise state: generator_states must be a uint8 tensor [B, S], got "
                    f"{tensor.dtype} {list(tensor.shape)}"
                )
            for row in tensor.cpu():
                generator = torch.Generator("cpu")
                try:
                    # a fresh copy: set_state() reads a view with a storage offset wrongly (or crashes)
                    generator.set_state(row.clone())
                except RuntimeError as error:
                    raise ValueError(f"initial noise state: invalid generator state ({error})") from error
                generators.append(generator)
        else:
            expected = (batch, num_frames - used, *new.frame_shape)
            if tuple(tensor.shape) != expected or not tensor.is_floating_point():
                raise ValueError(
                    f"initial noise state: remaining must be a floating tensor {list(expected)}, got "
                    f"{tensor.dtype} {list(tensor.shape)}"
                )
            remaining = tensor.to(dtype)
        self._set_layout(batch, num_frames, frame_shape, dtype)
        self.frames_used = used
        self._generators = generators
        self._remaining = remaining
