"""The MemRoPE KV cache: fixed-size per-layer buffers of un-roped keys and values.

Layout of a bounded cache once full (defaults, one slot = one latent frame of ``H' * W'`` tokens)::

    slot:   0 1 2 | 3        | 4         | 5 6 7 8 | 9 10 11
            sink  | long EMA | short EMA | recent  | current chunk

Call protocol per layer (docs/design.md §3): the first call of a chunk (``start_frame`` equal to the end of
what the layer has seen) *advances* the cache — evicts and compresses, then writes the chunk into
the last slots; every later call with the same ``start_frame`` *rewrites* the chunk's slots in
place. Keys are stored without RoPE; RoPE is applied with slot-relative temporal positions, so no
position ever leaves ``[0, cache_frames)``.

RoPE'd keys are kept in a workspace: per layer (default, fastest: only the chunk's own keys are
rotated per call, the rest once per chunk) or one workspace shared by all layers (resident memory
at the minimum plus one layer's keys; every call rotates its layer's whole context).

Attention hooks (:meth:`MemRoPECache.register_attention_hook`) see every attention call's RoPE'd
query and context, e.g. to measure how much attention each :data:`SLOT_ROLES` role receives
(:mod:`memrope.diagnostics`); with no hook registered they cost nothing.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch.utils.hooks import RemovableHandle

from memrope._dtypes import dtype_name
from memrope.cache_state import (
    FIRST_MEMORY_SLOT,
    LAYER_STATE_NAMES,
    LAYOUT_KEY,
    SCALE_STATE_NAMES,
    LayerRestore,
    StateChecker,
    encode_json,
)
from memrope.config import MemRoPEConfig
from memrope.errors import NonFiniteError
from memrope.kv_storage import SCALE_DTYPE, KVFormat, kv_format, scale_shape
from memrope.policies import CacheGeometry, CachePolicy, get_policy
from memrope.rope import RotaryEmbedding, frame_grid_positions, wan_axis_pairs

KeyWorkspace = Literal["per_layer", "shared"]
CallKind = Literal["advance", "rewrite", "recache"]
KEY_WORKSPACES: tuple[str, ...] = ("per_layer", "shared")
FULL_POLICY_INITIAL_CHUNKS = 4

# the roles of the built-in policies; a third-party policy adds its memory slot names (role_names)
SlotRole = Literal["sink", "long", "short", "recent", "current"]
SINK_ROLE: SlotRole = "sink"
LONG_ROLE: SlotRole = "long"
SHORT_ROLE: SlotRole = "short"
RECENT_ROLE: SlotRole = "recent"
CURRENT_ROLE: SlotRole = "current"
SLOT_ROLES: tuple[SlotRole, ...] = (SINK_ROLE, LONG_ROLE, SHORT_ROLE, RECENT_ROLE, CURRENT_ROLE)


@dataclass(frozen=True)
class CacheContext:
    """What one attention call reads from the cache (views, nothing copied).

    * ``keys``: RoPE'd keys of every filled slot, ``[B, filled_tokens, H, D]``.
    * ``values``: values of every filled slot, ``[B, filled_tokens, H, D]`` (with a ``kv_dtype``:
      dequantised into a workspace that the next call on the same device overwrites).
    * ``query_cos`` / ``query_sin``: float32 RoPE tables of the chunk's slots, ``[L, D]``.
    """

    keys: torch.Tensor
    values: torch.Tensor
    query_cos: torch.Tensor
    query_sin: torch.Tensor


class AttentionHook(Protocol):
    """Called as ``hook(cache, layer, query, context)`` by every attention call, before the kernel.

    * ``cache``: the :class:`MemRoPECache` the call went through; ``layer``: the layer index.
    * ``query``: the chunk's RoPE'd queries ``[B, Lq, H, D]``.
    * ``context``: the call's :class:`CacheContext` (RoPE'd keys and values of every filled slot,
      ``[B, Lk, H, D]``), already holding the chunk's own keys and values.

    Hooks must not modify these tensors; their return value is ignored.
    """

    def __call__(
        self, cache: MemRoPECache, layer: int, query: torch.Tensor, context: CacheContext, /
    ) -> None: ...


@dataclass
class LayerState:
    """Buffers and host-side counters of one layer (counters are Python ints: no host sync).

    ``keys`` / ``values`` are ``[B, T, H, D]`` in the cache dtype, or 8-bit codes with float32
    ``key_scales`` / ``value_scales`` ``[B, T, H, 1]`` when the cache has a ``kv_dtype`` (float8
    codes as their uint8 bit patterns: ``KVFormat.storage_dtype``).
    """

    keys: torch.Tensor
    values: torch.Tensor
    keys_roped: torch.Tensor | None
    key_scales: torch.Tensor | None = None
    value_scales: torch.Tensor | None = None
    filled_frames: int = 0
    end_frame: int = 0
    chunk_start: int = 0
    chunk_slot: int = 0
    roped_frames: int = 0
    last_call: CallKind | None = None
    memory: dict[str, torch.Tensor] = field(default_factory=dict)
    slot_frames: list[int] = field(default_factory=list)

    @property
    def memory_ready(self) -> bool:
        return bool(self.memory)


class MemRoPECache:
    """Per-layer KV cache with MemRoPE eviction, EMA memory tokens and online RoPE indexing.

    Args:
        config: the cache policy.
        num_layers: attention layers sharing this cache (each has its own state).
        batch_size, num_heads, head_dim: ``B``, ``H``, ``D`` of the keys and values.
        frame_shape: token grid ``(H', W')`` of one latent frame (Wan 480x832: ``(30, 52)``).
        device, dtype: where and in what the keys and values live.
        layer_devices: optional device of each layer's state (for models split over devices);
            overrides ``device``. A layer's keys and values must arrive on its device.
        rope: the rotary embedding (default: Wan 3-axis, interleaved, ``config.max_positions``).
        key_workspace: ``"per_layer"`` or ``"shared"`` (see the module docstring).
        kv_dtype: storage of the un-roped keys and values: ``None`` (default, the cache dtype),
            ``torch.float8_e4m3fn``, ``torch.float8_e5m2`` or ``torch.int8`` (or a name such as
            ``"fp8"``): 8-bit codes with a float32 scale per token and head (:mod:`memrope.kv_storage`,
            which states the error bounds). Attention still runs in ``dtype``: each call dequantises
            the slots it reads (values into one workspace per device shared by all layers, keys on
            their way into the RoPE'd-key workspace); EMA memories stay in ``config.memory_dtype``.
    """

    def __init__(
        self,
        config: MemRoPEConfig,
        *,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        frame_shape: tuple[int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        rope: RotaryEmbedding | None = None,
        key_workspace: KeyWorkspace = "per_layer",
        layer_devices: list[torch.device | str] | tuple[torch.device | str, ...] | None = None,
        kv_dtype: torch.dtype | str | None = None,
    ) -> None:
        if not isinstance(config, MemRoPEConfig):
            raise TypeError(f"config must be a MemRoPEConfig, got {type(config).__name__}")
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
        if (
            not isinstance(frame_shape, (tuple, list))
            or len(frame_shape) != 2
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in frame_shape)
        ):
            raise ValueError(
                f"frame_shape must be a pair of ints >= 1 (tokens per frame row, column), got {frame_shape!r}"
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if key_workspace not in KEY_WORKSPACES:
            raise ValueError(f"key_workspace must be one of {KEY_WORKSPACES}, got {key_workspace!r}")
        self.kv_format: KVFormat | None = kv_format(kv_dtype, dtype)
        self._rope_dtype = torch.promote_types(dtype, torch.float32)  # dequantised keys are roped from this
        if rope is None:
            rope = RotaryEmbedding(head_dim, wan_axis_pairs(head_dim), max_positions=config.max_positions)
        if rope.head_dim != head_dim or rope.num_axes != 3:
            raise ValueError(f"rope must be a 3-axis RotaryEmbedding with head_dim={head_dim}, got {rope!r}")
        self.config = config
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.frame_seqlen = self.frame_shape[0] * self.frame_shape[1]
        self.dtype = dtype
        requested_devices: list[torch.device | str | None] = (
            [device] * num_layers if layer_devices is None else list(layer_devices)
        )
        if len(requested_devices) != num_layers:
            raise ValueError(
                f"layer_devices must name one device per layer ({num_layers}), got {len(requested_devices)}"
            )
        self.layer_devices = [torch.empty(0, device=d).device for d in requested_devices]
        self.device = self.layer_devices[0]
        self.rope = rope
        self.key_workspace: KeyWorkspace = key_workspace
        self.memory_dtype = config.memory_dtype or dtype
        geometry = CacheGeometry(batch_size, num_heads, head_dim, self.frame_seqlen, dtype, self.memory_dtype)
        self.policy: CachePolicy = get_policy(config.policy)(config, geometry)
        self._memory_labels = [FIRST_MEMORY_SLOT - index for index in range(len(self.policy.memory_slots))]
        reserved = (*LAYER_STATE_NAMES, *SCALE_STATE_NAMES)
        clashes = sorted(set(self.policy.memory_shapes()) & set(reserved))
        if clashes:
            raise ValueError(
                f"policy {config.policy!r} names memory tensors {clashes}, which the cache saves itself "
                f"(reserved per layer: {reserved})"
            )
        if config.bounded:
            self.capacity_frames = config.cache_frames
        else:
            self.capacity_frames = min(FULL_POLICY_INITIAL_CHUNKS * config.chunk_frames, rope.max_positions)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._table_frames = self.capacity_frames
        self._shared_keys: dict[torch.device, torch.Tensor] = {}
        self._shared_owner: dict[torch.device, int] = {}
        self._shared_values: dict[torch.device, torch.Tensor] = {}  # dequantised values, with a kv_dtype
        self._recache: tuple[int, int] | None = None
        self._attention_hooks: OrderedDict[int, AttentionHook] = OrderedDict()
        self.layers = [self._new_layer(d) for d in self.layer_devices]
        self._build_tables()

    # ------------------------------------------------------------------ allocation
    def _buffer(self, frames: int, device: torch.device) -> torch.Tensor:
        shape = (self.batch_size, frames * self.frame_seqlen, self.num_heads, self.head_dim)
        return torch.zeros(shape, device=device, dtype=self.dtype)

    def _storage(self, frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One un-roped key or value buffer of ``frames`` frames and its scales (``None`` without a kv_dtype)."""
        if self.kv_format is None:
            return self._buffer(frames, device), None
        tokens = frames * self.frame_seqlen
        shape = (self.batch_size, tokens, self.num_heads, self.head_dim)
        codes = torch.zeros(shape, device=device, dtype=self.kv_format.storage_dtype)
        scales_shape = scale_shape(self.batch_size, tokens, self.num_heads)
        scales = torch.zeros(scales_shape, device=device, dtype=SCALE_DTYPE)
        return codes, scales

    def _new_layer(self, device: torch.device) -> LayerState:
        per_layer = self.key_workspace == "per_layer"
        keys_roped = self._buffer(self.capacity_frames, device) if per_layer else None
        if not per_layer and device not in self._shared_keys:
            self._shared_keys[device] = self._buffer(self.capacity_frames, device)
        frames = self.capacity_frames
        if self.kv_format is not None and device not in self._shared_values:
            self._shared_values[device] = self._buffer(frames, device)
        keys, key_scales = self._storage(frames, device)
        values, value_scales = self._storage(frames, device)
        return LayerState(keys, values, keys_roped, key_scales, value_scales)

    def _build_tables(self) -> None:
        """Float32 RoPE tables ``cos, sin`` ``[slots * P, D]`` of every slot position, on each layer device."""
        positions = frame_grid_positions(range(self._table_frames), self.frame_shape)
        cos, sin = self.rope.cos_sin(positions)
        self._tables = {
            device: (cos.to(device), sin.to(device)) for device in dict.fromkeys(self.layer_devices)
        }

    def _grow(self, state: LayerState, frames_needed: int) -> None:
        """Enlarge a ``full``-policy layer to hold ``frames_needed`` frames (amortised doubling)."""
        limit = self.rope.max_positions
        if frames_needed > limit:
            raise ValueError(
                f"start_frame + chunk_frames = {frames_needed} frames exceed the RoPE table "
                f"(max_positions={limit}) of the unbounded 'full' policy; use policy 'memrope' or 'sink' "
                "for longer videos"
            )
        frames = min(max(2 * state.keys.shape[1] // self.frame_seqlen, frames_needed), limit)
        if frames > self._table_frames:
            self._table_frames = self.capacity_frames = frames
            self._build_tables()
        device = state.keys.device
        used = state.filled_frames * self.frame_seqlen
        for name in ("keys", "values", "keys_roped", "key_scales", "value_scales"):
            old = getattr(state, name)
            if old is None:
                continue
            new = old.new_zeros((old.shape[0], frames * self.frame_seqlen, *old.shape[2:]))
            new[:, :used] = old[:, :used]
            setattr(state, name, new)
        shared = self._shared_keys.get(device)
        if shared is not None and shared.shape[1] < frames * self.frame_seqlen:
            self._shared_keys[device] = self._buffer(frames, device)
            self._shared_owner.pop(device, None)
        shared_values = self._shared_values.get(device)
        if shared_values is not None and shared_values.shape[1] < frames * self.frame_seqlen:
            self._shared_values[device] = self._buffer(frames, device)

    # ------------------------------------------------------------------ validation
    def _check_call(self, key: torch.Tensor, value: torch.Tensor, layer: int, start_frame: int) -> CallKind:
        """Validate one call and say what it does: ``"advance"``, ``"rewrite"`` or ``"recache"``."""
        state = self._layer_state(layer)
        if isinstance(start_frame, bool) or not isinstance(start_frame, int):
            raise TypeError(f"start_frame must be an int, got {type(start_frame).__name__}")
        if self._recache is not None:
            frames, what = self._recache[1], "recache window frames"
        else:
            frames = self.config.chunk_frames_at(start_frame)
            first = start_frame == 0 and self.config.first_chunk_frames is not None
            what = "first_chunk_frames" if first else "chunk_frames"
        expected = (self.batch_size, frames * self.frame_seqlen, self.num_heads, self.head_dim)
        for name, tensor in (("key", key), ("value", value)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"{name} must have shape [B, L, H, D] = {list(expected)} (L = {what} "
                    f"{frames} x {self.frame_seqlen} tokens of frame_shape {self.frame_shape}), "
                    f"got {list(tensor.shape)}"
                )
            if tensor.dtype != self.dtype:
                raise TypeError(f"{name} must have the cache dtype {self.dtype}, got {tensor.dtype}")
            if tensor.device != self.layer_devices[layer]:
                raise ValueError(
                    f"{name} must be on the device of layer {layer}'s cache, {self.layer_devices[layer]}, got {tensor.device}"
                )
        if self._recache is not None:
            if start_frame != self._recache[0]:
                raise ValueError(
                    f"start_frame must be the recache window's first frame {self._recache[0]}, got {start_frame}"
                )
            return "recache"
        if start_frame == state.end_frame:
            return "advance"
        if state.end_frame > 0 and start_frame == state.chunk_start:
            return "rewrite"
        allowed = f"{state.end_frame} (next chunk)"
        if state.end_frame > 0:
            allowed += f" or {state.chunk_start} (rewrite the current chunk)"
        raise ValueError(f"start_frame for layer {layer} must be {allowed}, got {start_frame}")

    def chunk_frames_at(self, start_frame: int) -> int:
        """Latent frames a call at chunk boundary ``start_frame`` carries (the first chunk may differ)."""
        return self.config.chunk_frames_at(start_frame)

    # ------------------------------------------------------------------ the per-call path
    def update(self, key: torch.Tensor, value: torch.Tensor, *, layer: int, start_frame: int) -> CacheContext:
        """Write one chunk's un-roped ``key`` / ``value`` ``[B, L, H, D]`` for ``layer``.

        The first call with a new ``start_frame`` advances the cache; later calls with the same
        ``start_frame`` rewrite the chunk's slots; inside :meth:`recaching` a call rewrites the
        recache window instead. Invalid calls raise before anything changes. Returns the views
        attention needs (see :class:`CacheContext`).
        """
        kind = self._check_call(key, value, layer, start_frame)
        state = self.layers[layer]
        if kind == "advance":
            self._advance(state, start_frame)
        state.last_call = kind
        first_slot = state.chunk_slot if kind != "recache" else state.slot_frames.index(start_frame)
        tokens = self.frame_seqlen
        chunk_begin = first_slot * tokens
        chunk_end = chunk_begin + key.shape[1]
        write_slot = self._first_written_slot(kind, first_slot, start_frame)
        write_begin = min(write_slot * tokens, chunk_end)
        self._store(
            state, write_begin, key[:, write_begin - chunk_begin :], value[:, write_begin - chunk_begin :]
        )
        slot_cos, slot_sin = self._tables[key.device]
        keys_roped = self._roped_keys(layer, state, write_begin // tokens, slot_cos, slot_sin)
        filled_tokens = state.filled_frames * tokens
        quantised = self.kv_format is not None
        return CacheContext(
            keys=keys_roped[:, :filled_tokens],
            values=self._dequantised_values(state) if quantised else state.values[:, :filled_tokens],
            query_cos=slot_cos[chunk_begin:chunk_end],
            query_sin=slot_sin[chunk_begin:chunk_end],
        )

    def _store(self, state: LayerState, begin: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write un-roped ``keys`` / ``values`` ``[B, n, H, D]`` into tokens ``begin .. begin + n - 1``.

        With a kv_dtype they are quantised on the way (transients: float32 copies of these tokens).
        """
        end = begin + keys.shape[1]
        if self.kv_format is None or state.key_scales is None or state.value_scales is None:
            state.keys[:, begin:end] = keys
            state.values[:, begin:end] = values
            return
        self.kv_format.write(state.keys[:, begin:end], state.key_scales[:, begin:end], keys)
        self.kv_format.write(state.values[:, begin:end], state.value_scales[:, begin:end], values)

    def _stored(
        self, state: LayerState, begin: int, end: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-roped keys and values of tokens ``begin .. end - 1``, ``[B, end - begin, H, D]``.

        Views of the buffers (in the cache dtype) without a kv_dtype; else dequantised into new tensors of ``dtype``.
        """
        if self.kv_format is None or state.key_scales is None or state.value_scales is None:
            return state.keys[:, begin:end], state.values[:, begin:end]
        decode = self.kv_format.decode
        return (
            decode(state.keys[:, begin:end], state.key_scales[:, begin:end], dtype),
            decode(state.values[:, begin:end], state.value_scales[:, begin:end], dtype),
        )

    def _dequantised_values(self, state: LayerState) -> torch.Tensor:
        """The filled slots' values dequantised into the device's shared value workspace, ``[B, filled_tokens, H, D]``."""
        assert self.kv_format is not None and state.value_scales is not None
        filled_tokens = state.filled_frames * self.frame_seqlen
        workspace = self._shared_values[state.values.device][:, :filled_tokens]
        return self.kv_format.decode_into(
            workspace, state.values[:, :filled_tokens], state.value_scales[:, :filled_tokens]
        )

    def _first_written_slot(self, kind: CallKind, first_slot: int, start_frame: int) -> int:
        """The first slot a call writes: the chunk's first slot, or past the sink on a protected rewrite.

        Official behaviour (``docs/design.md`` §3): a rewrite call of a chunk that starts after frame 0
        leaves the sink slots as the chunk's first call wrote them.
        """
        if kind == "rewrite" and start_frame > 0 and self.config.protect_sink_on_rewrite:
            return max(first_slot, self.config.sink_frames)
        return first_slot

    def _roped_keys(
        self, layer: int, state: LayerState, written_slot: int, slot_cos: torch.Tensor, slot_sin: torch.Tensor
    ) -> torch.Tensor:
        """The layer's keys with RoPE, re-rotating only stale slots, one frame at a time (small transients)."""
        if state.keys_roped is not None:
            workspace = state.keys_roped
        else:
            device = state.keys.device
            workspace = self._shared_keys[device]
            if self._shared_owner.get(device) != layer:
                state.roped_frames = 0
                self._shared_owner[device] = layer
        first = min(state.roped_frames, written_slot)
        tokens = self.frame_seqlen
        for frame in range(first, state.filled_frames):
            span = slice(frame * tokens, (frame + 1) * tokens)
            keys = state.keys[:, span]
            if self.kv_format is not None and state.key_scales is not None:
                keys = self.kv_format.decode(keys, state.key_scales[:, span], self._rope_dtype)
            self.rope.apply(keys, slot_cos[span], slot_sin[span], out=workspace[:, span])
        state.roped_frames = state.filled_frames
        return workspace

    def _advance(self, state: LayerState, start_frame: int) -> None:
        """Make room for a new chunk starting at global frame ``start_frame`` (docs/design.md §4-§6)."""
        chunk = self.config.chunk_frames_at(start_frame)
        if not self.config.bounded and state.filled_frames + chunk > state.keys.shape[1] // self.frame_seqlen:
            self._grow(state, state.filled_frames + chunk)
        capacity = state.keys.shape[1] // self.frame_seqlen
        if state.filled_frames + chunk <= capacity:
            state.chunk_slot = state.filled_frames
            state.filled_frames += chunk
            # a list, not range(start_frame, ...): under torch.compile a symbolic range end would
            # specialise start_frame and recompile every chunk
            state.slot_frames.extend([start_frame + offset for offset in range(chunk)])
        else:
            evicted = state.filled_frames + chunk - capacity
            sink = self.config.sink_frames
            evict_from = sink + len(self._memory_labels)
            self._evict(state, evict_from, evicted)
            self._shift_left(state, evict_from, evicted)
            kept = state.slot_frames[evict_from + evicted :]
            state.slot_frames = state.slot_frames[:sink] + self._memory_labels + kept
            state.slot_frames.extend([start_frame + offset for offset in range(chunk)])
            state.chunk_slot = capacity - chunk
            state.filled_frames = capacity
            state.roped_frames = min(state.roped_frames, sink)
        state.chunk_start = start_frame
        state.end_frame = start_frame + chunk

    def _shift_left(self, state: LayerState, destination: int, distance: int) -> None:
        """Move slots ``[destination + distance, filled)`` to ``destination`` without a temporary.

        Pieces of at most ``distance`` frames never overlap their source, so each copy is safe.
        """
        tokens = self.frame_seqlen
        frame = destination
        while frame + distance < state.filled_frames:
            width = min(distance, state.filled_frames - frame - distance)
            target = slice(frame * tokens, (frame + width) * tokens)
            source = slice((frame + distance) * tokens, (frame + distance + width) * tokens)
            for buffer in (state.keys, state.values, state.key_scales, state.value_scales):
                if buffer is not None:
                    buffer[:, target] = buffer[:, source]
            frame += width

    def _evict(self, state: LayerState, evict_from: int, evicted: int) -> None:
        """Hand slots ``[evict_from, evict_from + evicted)`` to the policy and write its memory slots.

        The memory slots are the ``len(policy.memory_slots)`` slots after the sink; on the first
        eviction they still hold frames, which the policy's memory replaces (for ``memrope`` the
        official behaviour, ``docs/design.md`` §5).
        """
        tokens = self.frame_seqlen
        span = slice(evict_from * tokens, (evict_from + evicted) * tokens)
        evicted_keys, evicted_values = self._stored(state, span.start, span.stop, self.dtype)
        memory_slots = self.policy.evict(state.memory, evicted_keys, evicted_values)
        if len(memory_slots) != len(self._memory_labels):
            raise RuntimeError(
                f"policy {self.config.policy!r} returned {len(memory_slots)} memory slots, "
                f"its memory_slots names {len(self._memory_labels)}"
            )
        shape = (self.batch_size, tokens, self.num_heads, self.head_dim)
        for slot, (keys, values) in enumerate(memory_slots, start=self.config.sink_frames):
            self._store(state, slot * tokens, keys.expand(shape), values.expand(shape))

    # ------------------------------------------------------------------ prompt switches
    def recache_window(self) -> tuple[int, int]:
        """``(first global frame, frame count)`` of the frames a prompt switch re-encodes.

        These are the real frames after the sink (recent frames and the last chunk, or every
        non-sink frame while filling); sink and memory slots keep the past. Every layer must be
        at the same chunk boundary.
        """
        layouts = {tuple(state.slot_frames) for state in self.layers}
        if len(layouts) != 1:
            raise ValueError("recache needs every layer at the same chunk boundary; a chunk is half-written")
        slot_frames = self.layers[0].slot_frames
        window = [
            frame for slot, frame in enumerate(slot_frames) if slot >= self.config.sink_frames and frame >= 0
        ]
        if not window:
            return self.layers[0].end_frame, 0
        return window[0], len(window)

    @contextmanager
    def recaching(self) -> Iterator[tuple[int, int]]:
        """Context in which each layer's call rewrites the :meth:`recache_window` (LongLive KV re-cache).

        Yields ``(start_frame, frames)``: run the model once on the clean latents of those frames
        (e.g. at timestep 0 under the new prompt) with that ``start_frame``; queries attend to the
        whole cache, and the window's keys and values are replaced.
        """
        if self._recache is not None:
            raise ValueError("recaching() is already active")
        window = self.recache_window()
        self._recache = window
        try:
            yield window
        finally:
            self._recache = None

    @property
    def active_recache_window(self) -> tuple[int, int] | None:
        """``(start_frame, frames)`` of the recache in progress inside :meth:`recaching`, else ``None``."""
        return self._recache

    # ------------------------------------------------------------------ attention hooks
    def register_attention_hook(self, hook: AttentionHook) -> RemovableHandle:
        """Call ``hook(cache, layer, query, context)`` on every attention call (see :class:`AttentionHook`).

        Hooks run in registration order, after the chunk is written and its query roped, before
        the attention kernel. They survive :meth:`reset` and are not part of :meth:`state_dict`.
        Under ``torch.compile`` hooks run eagerly (the graph breaks around them, so a
        ``fullgraph=True`` compile fails while a hook is registered); with none it is unaffected.

        Returns:
            a handle whose ``remove()`` unregisters the hook.
        """
        if not callable(hook):
            raise TypeError(
                f"hook must be callable as hook(cache, layer, query, context), got {type(hook).__name__}"
            )
        handle = RemovableHandle(self._attention_hooks)
        self._attention_hooks[handle.id] = hook
        return handle

    @property
    def attention_hooks(self) -> tuple[AttentionHook, ...]:
        """The registered attention hooks, in call order."""
        return tuple(self._attention_hooks.values())

    def call_attention_hooks(self, layer: int, query: torch.Tensor, context: CacheContext) -> None:
        """Run the registered hooks on one call: RoPE'd ``query`` ``[B, Lq, H, D]`` and its ``context``.

        :func:`memrope.attention.rope_on_the_fly` calls this; custom attention paths over the
        cache should too. With no hook registered it does nothing.
        """
        if self._attention_hooks:
            self._run_attention_hooks(layer, query, context)

    def _run_attention_hooks(self, layer: int, query: torch.Tensor, context: CacheContext) -> None:
        _eager_hook_runner()(self, tuple(self._attention_hooks.values()), layer, query, context)

    # ------------------------------------------------------------------ inspection
    def layer_contents(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-roped keys and values of the filled slots of ``layer`` in slot order, ``[B, filled_tokens, H, D]``.

        Views of the buffers; with a ``kv_dtype``, new tensors dequantised to the cache dtype.
        """
        state = self.layers[layer]
        return self._stored(state, 0, state.filled_frames * self.frame_seqlen, self.dtype)

    @property
    def kv_dtype(self) -> torch.dtype:
        """The dtype the un-roped keys and values are stored in: the cache dtype, or the 8-bit ``kv_dtype``."""
        return self.dtype if self.kv_format is None else self.kv_format.dtype

    def slot_layout(self, layer: int = 0) -> list[str]:
        """What each filled slot of ``layer`` holds: ``"f<global frame>"`` or a memory slot's name.

        The memory slots are named by the policy (``"memrope"``: ``"long"`` and ``"short"``).
        """
        return [self._slot_label(frame) for frame in self.layers[layer].slot_frames]

    def _slot_label(self, frame: int) -> str:
        if frame <= FIRST_MEMORY_SLOT:
            return self.policy.memory_slots[FIRST_MEMORY_SLOT - frame]
        return f"f{frame}"

    @property
    def role_names(self) -> tuple[str, ...]:
        """Every role :meth:`slot_roles` can return, in display order: sink, the memory slots, recent, current.

        :data:`SLOT_ROLES` for the ``memrope`` policy; a third-party policy's memory slot names
        take the place of ``"long"`` and ``"short"``.
        """
        return (SINK_ROLE, *self.policy.memory_slots, RECENT_ROLE, CURRENT_ROLE)

    def slot_roles(self, layer: int = 0) -> list[SlotRole]:
        """The role (one of :attr:`role_names`) of each filled slot of ``layer``, in slot order.

        * ``"current"``: the slots of the chunk last written (``chunk_slot .. filled - 1``: its
          ``chunk_frames``, or ``first_chunk_frames`` for the first chunk), or of the recache window
          inside :meth:`recaching`. This wins over ``"sink"`` while the first chunks fill the sink slots.
        * the policy's memory slot names (``"long"`` / ``"short"`` for ``memrope``): its memory slots.
        * ``"sink"``: other slots below ``config.sink_frames``.
        * ``"recent"``: every other real frame.
        """
        state = self._layer_state(layer)
        current = self._current_slots(state)
        return [self._slot_role(slot, frame, current) for slot, frame in enumerate(state.slot_frames)]

    def last_call_kind(self, layer: int = 0) -> CallKind | None:
        """What ``layer``'s latest call did: ``"advance"``, ``"rewrite"`` or ``"recache"``.

        ``None`` before the first call (and after :meth:`reset` or :meth:`load_state_dict`).
        """
        return self._layer_state(layer).last_call

    def _layer_state(self, layer: int) -> LayerState:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        return self.layers[layer]

    def _current_slots(self, state: LayerState) -> range:
        """Slots written by the latest call: the recache window inside :meth:`recaching`, else the chunk."""
        if self._recache is not None:
            start_frame, frames = self._recache
            if frames == 0 or start_frame not in state.slot_frames:
                return range(0)
            first = state.slot_frames.index(start_frame)
            return range(first, first + frames)
        if not state.slot_frames:
            return range(0)
        return range(state.chunk_slot, state.chunk_slot + state.end_frame - state.chunk_start)

    def _slot_role(self, slot: int, frame: int, current: range) -> SlotRole:
        if slot in current:
            return CURRENT_ROLE
        if frame <= FIRST_MEMORY_SLOT:
            return self.policy.memory_slots[FIRST_MEMORY_SLOT - frame]  # type: ignore[return-value]
        if slot < self.config.sink_frames:
            return SINK_ROLE
        return RECENT_ROLE

    def check_finite(self) -> None:
        """Raise :class:`~memrope.errors.NonFiniteError` if an EMA memory (or an 8-bit scale) holds NaN or infinity.

        One non-finite key or value folded into a memory stays there for the rest of the video, so
        a pipeline calls this once per chunk (one host sync for all layers), not per attention call.
        With a ``kv_dtype`` the scales of the filled slots are checked too: a non-finite key or
        value gives its token a non-finite scale (int8 codes cannot hold NaN themselves).
        """
        named = [
            (index, name, tensor)
            for index, state in enumerate(self.layers)
            for name, tensor in state.memory.items()
        ]
        named += [
            (index, name, scales[:, : state.filled_frames * self.frame_seqlen])
            for index, state in enumerate(self.layers)
            for name, scales in (("key_scales", state.key_scales), ("value_scales", state.value_scales))
            if scales is not None and state.filled_frames
        ]
        if not named:
            return
        finite = torch.stack([torch.isfinite(tensor).all().to(self.device) for _, _, tensor in named])
        if bool(finite.all()):
            return
        index, name, _ = named[int((~finite).nonzero()[0, 0])]
        if name in ("key_scales", "value_scales"):
            raise NonFiniteError(
                f"the {name.split('_')[0]}s stored in 8 bits in cache layer {index} hold NaN or infinity (their "
                f"{name.replace('_', ' ')} are not finite: a non-finite {name.split('_')[0]} was written at frame "
                f"{self.layers[index].chunk_start} or earlier); the rest of the video would be corrupted: check "
                "the model weights and inputs, then regenerate"
            )
        raise NonFiniteError(
            f"the {name.replace('_', ' ')} memory of cache layer {index} holds NaN or infinity (a non-finite key or "
            f"value was evicted into it, at frame {self.layers[index].chunk_start} or earlier); the rest of the video "
            "would be corrupted: check the model weights and inputs, then regenerate"
        )

    def resident_bytes(self) -> int:
        """Bytes held by the cache buffers (8-bit codes and scales with a kv_dtype), workspaces, memories and RoPE tables."""
        tensors: list[torch.Tensor] = [table for pair in self._tables.values() for table in pair]
        tensors += list(self._shared_keys.values())
        tensors += list(self._shared_values.values())
        for state in self.layers:
            tensors += [state.keys, state.values, *state.memory.values()]
            tensors += [t for t in (state.keys_roped, state.key_scales, state.value_scales) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def summary(self) -> str:
        """A readable description of the layout: which global frame sits in which slot."""
        config = self.config
        lines = [
            (
                f"MemRoPECache(policy={config.policy!r}, layers={self.num_layers}, batch={self.batch_size}, "
                f"heads={self.num_heads}, head_dim={self.head_dim}, frame_shape={self.frame_shape}, "
                f"dtype={str(self.dtype).removeprefix('torch.')}, device={self.device}"
                + ("" if self.kv_format is None else f", kv_dtype={self.kv_format.name}")
                + ")"
            ),
        ]
        if config.bounded:
            lines.append(
                f"  frames: {config.cache_frames} = {config.sink_frames} sink + {config.memory_frames} memory + "
                f"{config.recent_frames} recent + {config.chunk_frames} chunk"
            )
        layouts = {tuple(state.slot_frames) for state in self.layers}
        state = self.layers[0]
        slots = " ".join(f"{slot}:{label}" for slot, label in enumerate(self.slot_layout(0))) or "(empty)"
        lines.append(f"  layer 0 slots: {slots}")
        lines.append(
            f"  filled {state.filled_frames}/{self.capacity_frames} frames, next chunk at frame {state.end_frame}"
        )
        if len(layouts) > 1:
            lines.append("  (layers differ: a chunk is in progress)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ state management
    def reset(self) -> None:
        """Forget every frame; buffers (zeroed) and attention hooks are kept for the next video."""
        for state in self.layers:
            state.keys.zero_()
            state.values.zero_()
            for scales in (state.key_scales, state.value_scales):
                if scales is not None:
                    scales.zero_()
            state.filled_frames = state.end_frame = state.chunk_start = state.chunk_slot = (
                state.roped_frames
            ) = 0
            state.last_call = None
            state.memory = {}
            state.slot_frames = []
        self._shared_owner = {}

    def to(self, device: torch.device | str) -> MemRoPECache:
        """Move every buffer to ``device`` (in place) and return ``self``."""
        self.device = torch.empty(0, device=device).device
        self.layer_devices = [self.device] * self.num_layers
        self._build_tables()
        shared = next(iter(self._shared_keys.values()), None)
        self._shared_keys = {} if shared is None else {self.device: shared.to(self.device)}
        self._shared_owner = {}
        shared_values = next(iter(self._shared_values.values()), None)
        self._shared_values = {} if shared_values is None else {self.device: shared_values.to(self.device)}
        for state in self.layers:
            state.keys = state.keys.to(self.device)
            state.values = state.values.to(self.device)
            if state.keys_roped is not None:
                state.keys_roped = state.keys_roped.to(self.device)
            if state.key_scales is not None and state.value_scales is not None:
                state.key_scales = state.key_scales.to(self.device)
                state.value_scales = state.value_scales.to(self.device)
            state.memory = {name: tensor.to(self.device) for name, tensor in state.memory.items()}
            state.roped_frames = 0
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{name: tensor}`` (safetensors-friendly) holding everything needed to resume exactly.

        Per layer ``i``: ``layers.i.keys`` / ``layers.i.values`` (filled slots, un-roped),
        ``layers.i.counters`` (filled frames, end frame, chunk start, chunk slot),
        ``layers.i.slot_frames`` and, once memory exists, ``layers.i.{long,short}_{keys,values}``.
        With a ``kv_dtype``, ``keys`` / ``values`` hold the raw 8-bit codes and ``layers.i.key_scales``
        / ``layers.i.value_scales`` their float32 scales ``[B, filled_tokens, H, 1]`` (bit-exact resume).
        ``meta.layout`` (JSON as uint8) records the configuration and geometry the state belongs to
        (and the ``kv_dtype``, if any), so :meth:`load_state_dict` refuses a state from another cache.
        """
        result: dict[str, torch.Tensor] = {LAYOUT_KEY: encode_json(self._layout())}
        for index, state in enumerate(self.layers):
            prefix = f"layers.{index}."
            used = state.filled_frames * self.frame_seqlen
            saved_dtype = self.kv_dtype  # float8 codes are saved as float8 (their buffers are uint8)
            result[prefix + "keys"] = state.keys[:, :used].view(saved_dtype).contiguous().clone()
            result[prefix + "values"] = state.values[:, :used].view(saved_dtype).contiguous().clone()
            if state.key_scales is not None and state.value_scales is not None:
                result[prefix + "key_scales"] = state.key_scales[:, :used].contiguous().clone()
                result[prefix + "value_scales"] = state.value_scales[:, :used].contiguous().clone()
            counters = [state.filled_frames, state.end_frame, state.chunk_start, state.chunk_slot]
            result[prefix + "counters"] = torch.tensor(counters, dtype=torch.int64)
            result[prefix + "slot_frames"] = torch.tensor(state.slot_frames, dtype=torch.int64)
            for name, tensor in state.memory.items():
                result[prefix + name] = tensor.clone()
        return result

    def _layout(self) -> dict[str, Any]:
        """What a state must agree on to be loaded here: the policy settings and the tensor geometry."""
        config = self.config.to_dict()
        config.pop("memory_dtype")
        layout: dict[str, Any] = {
            "config": config,
            "num_layers": self.num_layers,
            "batch_size": self.batch_size,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "frame_shape": list(self.frame_shape),
        }
        if self.kv_format is not None:
            layout["kv_dtype"] = self.kv_format.name  # informative: load_state_dict converts other storage
        return layout

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict`; everything is validated before the cache is touched.

        A state whose keys and values are stored otherwise than this cache's ``kv_dtype`` is
        converted, with a ``UserWarning``: 8-bit codes are dequantised (exact up to the cache
        dtype), float keys and values are quantised (lossy, within :mod:`memrope.kv_storage`'s
        bounds), one 8-bit format goes to another through float32. The same storage restores bit-exactly.

        Raises:
            ValueError: the state belongs to another configuration or geometry (``meta.layout``;
                states written before it existed are checked structurally only), an entry is missing,
                unexpected or of the wrong shape, or the counters, slot layout and memories disagree.
            TypeError: keys or values of the wrong kind (8-bit codes without their scales, or scales
                beside float keys).
        """
        checker = StateChecker(
            self.config,
            self.policy,
            layout=self._layout(),
            num_layers=self.num_layers,
            batch_size=self.batch_size,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            frame_seqlen=self.frame_seqlen,
            capacity_frames=self.capacity_frames if self.config.bounded else self.rope.max_positions,
        )
        plans = checker.check(state_dict)
        self._warn_on_conversion(plans)
        for index, plan in enumerate(plans):
            state = self.layers[index]
            if not self.config.bounded and plan.filled > state.keys.shape[1] // self.frame_seqlen:
                self._grow(state, plan.filled)
            used = plan.filled * self.frame_seqlen
            device = state.keys.device
            saved_format = None if plan.key_scales is None else kv_format(plan.keys.dtype, self.dtype)
            if saved_format is not None and saved_format == self.kv_format:
                for target, source in (
                    (state.keys, plan.keys),
                    (state.values, plan.values),
                    (state.key_scales, plan.key_scales),
                    (state.value_scales, plan.value_scales),
                ):
                    assert target is not None and source is not None
                    target[:, :used] = source.to(device).view(target.dtype)
            else:
                keys, values = plan.keys, plan.values
                if saved_format is not None and plan.key_scales is not None and plan.value_scales is not None:
                    keys = saved_format.decode(keys, plan.key_scales, self._rope_dtype)
                    values = saved_format.decode(values, plan.value_scales, self._rope_dtype)
                self._store(state, 0, keys.to(device, self.dtype), values.to(device, self.dtype))
            state.filled_frames, state.end_frame = plan.filled, plan.end_frame
            state.chunk_start, state.chunk_slot = plan.chunk_start, plan.chunk_slot
            state.slot_frames = plan.slot_frames
            state.memory = {
                name: tensor.to(device, self.memory_dtype).clone() for name, tensor in plan.memory.items()
            }
            state.roped_frames = 0
            state.last_call = None
        self._shared_owner = {}

    def _warn_on_conversion(self, plans: list[LayerRestore]) -> None:
        """One ``UserWarning`` if a state's keys and values are stored otherwise than this cache's."""
        stored = {dtype_name(plan.keys.dtype) if plan.key_scales is not None else None for plan in plans}
        mine = None if self.kv_format is None else self.kv_format.name
        others = sorted(str(name or "float") for name in stored - {mine})
        if others:
            target = f"kv_dtype={mine}" if mine else f"{dtype_name(self.dtype)} (no kv_dtype)"
            action = "quantised" if mine else "dequantised"
            warnings.warn(
                f"state_dict holds keys and values stored as {', '.join(others)}; {action} to this cache's "
                f"{target} on loading, so the resumed run differs slightly from one without the switch",
                UserWarning,
                stacklevel=3,
            )


def _run_hooks(
    cache: MemRoPECache,
    hooks: tuple[AttentionHook, ...],
    layer: int,
    query: torch.Tensor,
    context: CacheContext,
) -> None:
    for hook in hooks:
        hook(cache, layer, query, context)


@functools.cache
def _eager_hook_runner() -> Callable[..., None]:
    """:func:`_run_hooks` excluded from ``torch.compile`` graphs, built on first use.

    ``torch.compiler.disable`` imports ``torch._dynamo`` (about a second), so it is not applied at
    import time: a cache without hooks never pays for it.
    """
    return torch.compiler.disable(_run_hooks)  # type: ignore[no-any-return]
