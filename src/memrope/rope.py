"""N-axis rotary position embedding with precomputed tables.

Wan's 3-axis RoPE is the default: channel pairs are adjacent elements ``(x[2i], x[2i+1])`` and the
``head_dim / 2`` pairs are split into temporal, height and width groups of
``c - 2 * (c // 3)``, ``c // 3``, ``c // 3`` pairs. Rotate-half pairing (``(x[i], x[i + d/2])``) and
arbitrary axis splits are options, so HunyuanVideo-style models fit as well.

Angles are computed in float64 once; the cos/sin tables are then stored in float32 and RoPE is
applied in float32 (inputs of lower precision are upcast and the result is cast back), as a complex
multiplication for interleaved pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from memrope._validation import check_int

__all__ = [
    "DEFAULT_THETA",
    "PAIRINGS",
    "ROTARY_BLOCK_ELEMENTS",
    "Pairing",
    "RotaryEmbedding",
    "apply_rotary",
    "frame_grid_positions",
    "wan_axis_pairs",
]

Pairing = Literal["interleaved", "rotate_half"]
PAIRINGS: tuple[str, ...] = ("interleaved", "rotate_half")
DEFAULT_THETA = 10000.0
ROTARY_BLOCK_ELEMENTS = 1 << 21  # tokens are rotated in blocks of at most this many elements


def wan_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of the ``head_dim // 2`` channel pairs into (temporal, height, width)."""
    pairs = head_dim // 2
    return (pairs - 2 * (pairs // 3), pairs // 3, pairs // 3)


def frame_grid_positions(frames: Sequence[int] | torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Positions ``[len(frames) * H * W, 3]`` (temporal, row, column) of the tokens of whole frames.

    Tokens are in (frame, row, column) order: token ``p`` of a frame sits at row ``p // W`` and
    column ``p % W``.
    """
    height, width = grid_hw
    frame_ids = torch.as_tensor(frames, dtype=torch.long).reshape(-1)
    rows = torch.arange(height, dtype=torch.long)
    cols = torch.arange(width, dtype=torch.long)
    grid = torch.stack(torch.meshgrid(frame_ids, rows, cols, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


class RotaryEmbedding:
    """Rotary embedding over several position axes, each with its own frequency table.

    Args:
        head_dim: channels per head ``D`` (even).
        axis_pairs: channel pairs per axis, summing to ``D // 2``; defaults to Wan's 3-axis split.
        theta: RoPE base.
        max_positions: table length per axis (a position must be ``< max_positions``).
        pairing: ``"interleaved"`` (Wan) or ``"rotate_half"``.

    The frequency of pair ``j`` of an axis with ``m`` pairs is ``theta ** (-2j / (2m))``.
    """

    def __init__(
        self,
        head_dim: int,
        axis_pairs: Sequence[int] | None = None,
        *,
        theta: float = DEFAULT_THETA,
        max_positions: int = 1024,
        pairing: Pairing = "interleaved",
    ) -> None:
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        max_positions = check_int(max_positions, "max_positions")
        if not (isinstance(theta, (int, float)) and theta > 0):
            raise ValueError(f"theta must be a positive number, got {theta!r}")
        pairs = tuple(wan_axis_pairs(head_dim) if axis_pairs is None else axis_pairs)
        if (
            any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in pairs)
            or sum(pairs) != head_dim // 2
        ):
            raise ValueError(
                f"axis_pairs must be non-negative ints summing to head_dim // 2 = {head_dim // 2}, got {pairs}"
            )
        self.head_dim = head_dim
        self.axis_pairs = pairs
        self.theta = float(theta)
        self.max_positions = max_positions
        self.pairing: Pairing = pairing
        self.angle_tables = [self._axis_angles(count) for count in pairs]

    @property
    def num_axes(self) -> int:
        return len(self.axis_pairs)

    def _axis_angles(self, pair_count: int) -> torch.Tensor:
        """Float64 angles ``[max_positions, pair_count]`` of one axis."""
        channels = 2 * pair_count
        exponents = torch.arange(0, channels, 2, dtype=torch.float64) / max(channels, 1)
        inv_freq = 1.0 / torch.pow(torch.tensor(self.theta, dtype=torch.float64), exponents)
        positions = torch.arange(self.max_positions, dtype=torch.float64)
        return torch.outer(positions, inv_freq)

    def check_positions(self, positions: torch.Tensor) -> None:
        """Raise ``ValueError`` if any position lies outside ``[0, max_positions)``."""
        if positions.ndim != 2 or positions.shape[1] != self.num_axes:
            raise ValueError(
                f"positions must have shape [N, {self.num_axes}] (one column per axis), got {tuple(positions.shape)}"
            )
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.max_positions):
            raise ValueError(
                f"positions must lie in [0, {self.max_positions}) (the RoPE table length), got values in "
                f"[{int(positions.min())}, {int(positions.max())}]"
            )

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Float64 angles ``[N, D // 2]`` for positions ``[N, num_axes]`` (checked on the host)."""
        positions = positions.to(device="cpu", dtype=torch.long)
        self.check_positions(positions)
        parts = [table[positions[:, axis]] for axis, table in enumerate(self.angle_tables)]
        return torch.cat(parts, dim=1)

    def cos_sin(
        self, positions: torch.Tensor, *, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 tables ``cos, sin`` of shape ``[N, D]`` (one value per channel) for ``positions``."""
        angles = self.angles(positions)
        if self.pairing == "interleaved":
            angles = angles.repeat_interleave(2, dim=1)
        else:
            angles = torch.cat([angles, angles], dim=1)
        return angles.cos().to(device=device, dtype=torch.float32), angles.sin().to(
            device=device, dtype=torch.float32
        )

    def apply(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rotate ``x`` ``[B, N, H, D]`` by tables ``[N, D]``; computed in float32, returned in ``x.dtype``.

        ``out`` (shape and dtype of ``x``) receives the result instead of a new tensor.
        """
        return apply_rotary(x, cos, sin, self.pairing, out=out)

    def __repr__(self) -> str:
        return (
            f"RotaryEmbedding(head_dim={self.head_dim}, axis_pairs={self.axis_pairs}, theta={self.theta:g}, "
            f"max_positions={self.max_positions}, pairing={self.pairing!r})"
        )


def _swap_pairs(x: torch.Tensor, pairing: Pairing) -> torch.Tensor:
    """Every channel's partner, in a new tensor: ``(x[2i+1], x[2i])`` or ``(x[i+d/2], x[i])``."""
    if pairing == "interleaved":
        return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    first, second = x.chunk(2, dim=-1)
    return torch.cat((second, first), dim=-1)


def _partner_signs(head_dim: int, pairing: Pairing, like: torch.Tensor) -> torch.Tensor:
    """``-1`` for the channels whose partner enters negated (``x[2i]`` or ``x[i < d/2]``), else ``+1``."""
    signs = torch.ones(head_dim, dtype=like.dtype, device=like.device)
    if pairing == "interleaved":
        signs[0::2] = -1
    else:
        signs[: head_dim // 2] = -1
    return signs


def apply_rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pairing: Pairing = "interleaved",
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """RoPE of ``x`` ``[B, N, H, D]`` with per-token tables ``cos, sin`` ``[N, D]`` (float32).

    The rotation is computed in float32 (float64 inputs stay float64) and cast back to ``x.dtype``:
    ``x * cos + partner(x) * sin`` with ``partner = (-x[2i+1], x[2i])`` (interleaved) or
    ``(-x[i+d/2], x[i])`` (rotate-half). Interleaved pairs are rotated as one complex multiplication
    ``(x[2i] + i x[2i+1]) * (cos + i sin)`` (one pass over ``x``; the tables must give both channels
    of a pair the same angle, as :meth:`RotaryEmbedding.cos_sin` does): the same products and sums,
    so the same bits unless the kernel fuses a multiply-add (then within one rounding). Rotate-half,
    calls that need gradients and calls under ``torch.compile`` (where it fuses into one kernel)
    evaluate the expression itself. Tokens are
    rotated in blocks of at most ``ROTARY_BLOCK_ELEMENTS`` elements written straight into the
    result, so temporaries stay small. ``out`` (the shape of ``x``, any floating dtype) receives the
    result instead of a new tensor in ``x.dtype``.
    """
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    if out is None:
        out = torch.empty_like(x)
    cos = cos.to(compute_dtype)
    sin = sin.to(compute_dtype)
    # out= kernels do not record autograd; with gradients the same sums go through differentiable ops
    differentiable = torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad)
    tokens = x.shape[1]
    step = max(1, ROTARY_BLOCK_ELEMENTS // max(x.numel() // max(tokens, 1), 1))
    # compiled, the plain expression below becomes one fused kernel (and complex views do not trace)
    if pairing == "interleaved" and not differentiable and not torch.compiler.is_compiling():
        _rotate_interleaved(x, cos, sin, out, compute_dtype, step)
        return out
    signed_sin = sin * _partner_signs(x.shape[-1], pairing, sin)
    for begin in range(0, tokens, step):
        block = slice(begin, begin + step)
        values = x[:, block].to(compute_dtype)
        partner = _swap_pairs(values, pairing) * signed_sin[block, None, :]
        if out.dtype == compute_dtype and not differentiable:
            torch.mul(values, cos[block, None, :], out=out[:, block]).add_(partner)
        else:
            out[:, block] = values * cos[block, None, :] + partner
    return out


def _complex_pairs(x: torch.Tensor) -> torch.Tensor | None:
    """``x [..., D]`` seen as ``D/2`` complex numbers ``x[2i] + i*x[2i+1]`` (a view), or ``None`` if its layout forbids it."""
    if x.stride(-1) != 1 or x.storage_offset() % 2 or any(stride % 2 for stride in x.stride()[:-1]):
        return None
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


def _rotate_interleaved(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    compute_dtype: torch.dtype,
    step: int,
) -> None:
    """Interleaved RoPE as one complex multiplication per block: ``(x[2i] + i x[2i+1]) * (cos + i sin)``.

    The product's parts are ``x[2i] cos - x[2i+1] sin`` and ``x[2i] sin + x[2i+1] cos``: the same
    products and sums as the real formulation, in a single pass over ``x`` written into ``out``.
    The two channels of a pair share their angle, so ``cos[:, 2i]`` and ``sin[:, 2i]`` are the table.
    """
    rotation = torch.complex(cos[:, 0::2], sin[:, 0::2])  # [N, D/2]
    for begin in range(0, x.shape[1], step):
        block = slice(begin, begin + step)
        values = x[:, block].to(compute_dtype)
        source = _complex_pairs(values)
        if source is None:
            source = torch.view_as_complex(values.contiguous().unflatten(-1, (-1, 2)))
        factor = rotation[block, None, :]
        target = out[:, block]
        target_pairs = _complex_pairs(target) if target.dtype == compute_dtype else None
        if target_pairs is not None:
            torch.mul(source, factor, out=target_pairs)
        else:
            target.copy_(torch.view_as_real(source * factor).flatten(-2))
