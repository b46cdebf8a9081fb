"""Cache policy configuration, validated on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from memrope.policies import available_policies, get_policy
from memrope.policies.memrope import ADAPTIVE_RATE_MAX_FACTOR, ADAPTIVE_RATE_MIN_FACTOR

__all__ = [
    "ADAPTIVE_RATE_MAX_FACTOR",
    "ADAPTIVE_RATE_MIN_FACTOR",
    "DEFAULT_MAX_POSITIONS",
    "OFFICIAL_MODES",
    "POLICIES",
    "POOLINGS",
    "MemRoPEConfig",
    "Policy",
    "Pooling",
]

Policy = Literal["memrope", "sink", "full"]
Pooling = Literal["mean", "per_position"]

POLICIES: tuple[str, ...] = ("memrope", "sink", "full")  # the built-in ones; see available_policies()
POOLINGS: tuple[str, ...] = ("mean", "per_position")
DEFAULT_MAX_POSITIONS = 1024
OFFICIAL_MODES = {"ema": "memrope", "eviction": "sink"}  # official compression_method -> policy


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _check_alpha(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a float in [0, 1], got {value}")
    return float(value)


@dataclass(frozen=True)
class MemRoPEConfig:
    """How the KV cache of an autoregressive video DiT is bounded.

    Defaults are the paper's: 12 frames = 3 sink + 2 memory + 4 recent + 3 chunk.

    * ``policy``: ``"memrope"`` (sink + long/short EMA memory + recent + chunk; official
      ``compression_method: ema``), ``"sink"`` (sink + FIFO; official ``eviction``) or ``"full"``
      (unbounded: every frame is kept at its global position, up to ``max_positions`` frames).
    * ``cache_frames``: latent frames the cache holds (official ``local_attn_size``); ignored by
      ``"full"``.
    * ``sink_frames``: frames at the start of the video kept forever (official ``sink_size``).
    * ``chunk_frames``: latent frames generated per chunk (official ``num_frame_per_block``).
    * ``first_chunk_frames``: latent frames of the first chunk when it differs (Self-Forcing's
      ``independent_first_frame=True``: 1, then chunks of ``chunk_frames``); ``None``: the first chunk
      is a chunk like the others. Chunk ``k >= 1`` then starts at frame
      ``first_chunk_frames + (k - 1) * chunk_frames`` (see :meth:`chunk_start`). A chunk that starts
      inside the sink (frame 1 after a 1-frame first chunk, with ``sink_frames=3``) is protected on
      rewrites like any chunk after frame 0 (``protect_sink_on_rewrite``).
    * ``alpha_long`` / ``alpha_short``: EMA rates, ``m <- a*x + (1-a)*m``.
    * ``pooling``: ``"mean"`` pools evicted frames over all their tokens (official default);
      ``"per_position"`` pools over the evicted frames only, one vector per spatial position.
    * ``adaptive_short_rate``: the official hidden ``ema_adaptive`` rate for the short memory,
      ``a_short * (0.1 + 4.9 * motion)``; requires ``pooling="per_position"``.
      The official code does not clamp that rate: with ``alpha_short > 0.2`` it exceeds 1 at the
      highest-motion positions (over-relaxation). Such values are accepted, with a warning.
    * ``memory_dtype``: dtype of the EMA accumulators (float32 by default, so alpha 0.01 does not
      stall in bf16); ``None`` keeps them in the cache dtype like the official code.
    * ``max_positions``: length of the RoPE tables (temporal positions 0..max_positions-1).
    * ``protect_sink_on_rewrite``: the official behaviour (default ``True``): a rewrite call of a chunk
      that starts after frame 0 never writes sink slots, so when ``chunk_frames < sink_frames`` the
      sink frames of such a chunk keep the keys and values of the chunk's *first* (noisiest) call.
      ``False`` writes every call into every slot of the chunk (cleaner sink frames, no parity with
      the official code for chunk sizes below the sink). See ``docs/design.md`` §3.

    An alpha of 0 freezes that memory at the first evicted frames and an alpha of 1 makes it a copy
    of the latest evicted frames; both are accepted, with a warning for 0.
    """

    policy: Policy | str = "memrope"
    cache_frames: int = 12
    sink_frames: int = 3
    chunk_frames: int = 3
    alpha_long: float = 0.01
    alpha_short: float = 0.1
    pooling: Pooling = "mean"
    adaptive_short_rate: bool = False
    memory_dtype: torch.dtype | None = field(default=torch.float32)
    max_positions: int = DEFAULT_MAX_POSITIONS
    protect_sink_on_rewrite: bool = True
    first_chunk_frames: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.policy, str) or self.policy not in available_policies():
            raise ValueError(f"policy must be one of {available_policies()}, got {self.policy!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _check_int("chunk_frames", self.chunk_frames, 1)
        _check_int("sink_frames", self.sink_frames, 0)
        _check_int("max_positions", self.max_positions, 1)
        _check_alpha("alpha_long", self.alpha_long)
        _check_alpha("alpha_short", self.alpha_short)
        for name in ("adaptive_short_rate", "protect_sink_on_rewrite"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.adaptive_short_rate and self.pooling != "per_position":
            raise ValueError(
                "adaptive_short_rate=True requires pooling='per_position' (the official ema_adaptive "
                f"knob pools per position), got pooling={self.pooling!r}"
            )
        if self.memory_dtype is not None and (
            not isinstance(self.memory_dtype, torch.dtype) or not self.memory_dtype.is_floating_point
        ):
            raise TypeError(f"memory_dtype must be a floating torch.dtype or None, got {self.memory_dtype!r}")
        policy = get_policy(self.policy)
        if policy.bounded:
            _check_int("cache_frames", self.cache_frames, 1)
        policy.check_config(self)
        if self.first_chunk_frames is not None:
            _check_int("first_chunk_frames", self.first_chunk_frames, 1)
            if policy.bounded and self.first_chunk_frames > self.cache_frames:
                raise ValueError(
                    f"first_chunk_frames must be <= cache_frames={self.cache_frames} (the first chunk fills an "
                    f"empty cache), got {self.first_chunk_frames}"
                )
            if self.first_chunk_frames == self.chunk_frames:
                object.__setattr__(self, "first_chunk_frames", None)  # the same chunk sequence, one spelling

    @property
    def first_chunk(self) -> int:
        """Latent frames of the first chunk: ``first_chunk_frames``, or ``chunk_frames`` when that is ``None``."""
        return self.chunk_frames if self.first_chunk_frames is None else self.first_chunk_frames

    def chunk_start(self, index: int) -> int:
        """Global frame where chunk ``index`` (0, 1, ...) starts."""
        return 0 if index == 0 else self.first_chunk + (index - 1) * self.chunk_frames

    def chunk_frames_at(self, start_frame: int) -> int:
        """Latent frames of the chunk starting at global frame ``start_frame`` (a chunk boundary)."""
        return self.first_chunk if start_frame == 0 else self.chunk_frames

    def chunk_index(self, start_frame: int) -> int | None:
        """Index of the chunk starting at ``start_frame``, or ``None`` when that is not a chunk boundary."""
        if start_frame == 0:
            return 0
        offset = start_frame - self.first_chunk
        if offset < 0 or offset % self.chunk_frames:
            return None
        return 1 + offset // self.chunk_frames

    @property
    def bounded(self) -> bool:
        """Whether the cache has a fixed size (every built-in policy but ``"full"``)."""
        return get_policy(self.policy).bounded

    @property
    def memory_frames(self) -> int:
        """Frames holding the policy's memory after the sink: 2 for ``"memrope"``, 0 for ``"sink"``."""
        return len(get_policy(self.policy).memory_slots)

    @property
    def recent_frames(self) -> int:
        """Frames of the recent window, between the memory and the current chunk, once full."""
        if not self.bounded:
            return 0
        return self.cache_frames - self.sink_frames - self.memory_frames - self.chunk_frames

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (the dtype as a string) that :meth:`from_dict` reads back."""
        data = asdict(self)
        data["memory_dtype"] = (
            None if self.memory_dtype is None else str(self.memory_dtype).removeprefix("torch.")
        )
        return data

    @classmethod
    def from_official(
        cls, settings: dict[str, Any], chunk_frames: int, *, first_chunk_frames: int | None = None
    ) -> MemRoPEConfig:
        """The configuration of official MemRoPE cache settings.

        ``settings``: ``mode`` (or ``compression_method``) ``"ema"`` -> policy ``memrope``,
        ``"eviction"`` -> ``sink``; ``local_attn_size`` (-1 -> policy ``full``); ``sink_size``;
        ``ema_alpha_long`` / ``ema_alpha_short`` (default 0.01 / 0.1);
        ``per_position_pooling_and_adaptive_alpha`` (or ``ema_adaptive``) -> per-position pooling
        with the adaptive short rate. ``chunk_frames``: the official ``num_frame_per_block``;
        ``first_chunk_frames``: 1 for Self-Forcing's ``independent_first_frame=True`` (which the official
        MemRoPE pipeline does not run), else ``None``.
        """
        mode = settings.get("mode", settings.get("compression_method"))
        if mode not in OFFICIAL_MODES:
            raise ValueError(
                f"official mode must be one of {sorted(OFFICIAL_MODES)} (compression_method), got {mode!r}"
            )
        for name in ("local_attn_size", "sink_size"):
            if name not in settings:
                raise ValueError(f"official cache settings lack {name!r} (got {sorted(settings)})")
        size = int(settings["local_attn_size"])
        adaptive = bool(
            settings.get("per_position_pooling_and_adaptive_alpha", settings.get("ema_adaptive", False))
        )
        values: dict[str, Any] = {
            "policy": "full" if size == -1 else OFFICIAL_MODES[mode],
            "sink_frames": int(settings["sink_size"]),
            "chunk_frames": int(chunk_frames),
            "alpha_long": float(settings.get("ema_alpha_long", cls.alpha_long)),
            "alpha_short": float(settings.get("ema_alpha_short", cls.alpha_short)),
            "pooling": "per_position" if adaptive else "mean",
            "adaptive_short_rate": adaptive,
            "first_chunk_frames": first_chunk_frames,
        }
        if size != -1:
            values["cache_frames"] = size
        return cls(**values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemRoPEConfig:
        values = dict(data)
        dtype_name = values.get("memory_dtype")
        if isinstance(dtype_name, str):
            dtype = getattr(torch, dtype_name, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"memory_dtype must name a torch dtype, got {dtype_name!r}")  # noqa: TRY004 (a bad name, not a bad type)
            values["memory_dtype"] = dtype
        return cls(**values)
