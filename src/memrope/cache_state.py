"""Saving and restoring a :class:`~memrope.cache.MemRoPECache`: the checks a state must pass.

:meth:`MemRoPECache.load_state_dict` validates everything here before it touches a buffer: the
recorded layout (``meta.layout``: configuration and geometry), every layer's counters, slot labels
and the policy's memory tensors.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import torch

from memrope._dtypes import dtype_name
from memrope.config import MemRoPEConfig
from memrope.kv_storage import supported_kv_dtype_names
from memrope.policies import CachePolicy

__all__ = [
    "CONVERTIBLE_LAYOUT_NAMES",
    "FIRST_MEMORY_SLOT",
    "LAYER_STATE_NAMES",
    "LAYOUT_KEY",
    "SCALE_STATE_NAMES",
    "LayerRestore",
    "StateChecker",
    "decode_json",
    "encode_json",
]

LAYOUT_KEY = "meta.layout"
FIRST_MEMORY_SLOT = -2  # slot_frames label of memory slot i: FIRST_MEMORY_SLOT - i
LAYER_STATE_NAMES = ("keys", "values", "counters", "slot_frames")  # saved as layers.{i}.{name}
SCALE_STATE_NAMES = ("key_scales", "value_scales")  # saved as layers.{i}.{name} by a cache with a kv_dtype
CONVERTIBLE_LAYOUT_NAMES = ("kv_dtype",)  # layout entries a state may differ in: load_state_dict converts


@dataclass(frozen=True)
class LayerRestore:
    """One layer's validated entries, ready to be copied into the cache."""

    names: set[str]
    filled: int
    end_frame: int
    chunk_start: int
    chunk_slot: int
    slot_frames: list[int]
    memory: dict[str, torch.Tensor]
    keys: torch.Tensor
    values: torch.Tensor
    key_scales: torch.Tensor | None = None  # with 8-bit keys and values: float32 [B, filled_tokens, H, 1]
    value_scales: torch.Tensor | None = None


class StateChecker:
    """Validates a state dict against one cache's configuration, policy and geometry.

    ``capacity_frames`` is the most frames a layer may hold (the window, or the RoPE table for an
    unbounded cache); ``layout`` is what the cache's own state would record under :data:`LAYOUT_KEY`.
    """

    def __init__(
        self,
        config: MemRoPEConfig,
        policy: CachePolicy,
        *,
        layout: dict[str, Any],
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        frame_seqlen: int,
        capacity_frames: int,
    ) -> None:
        self.config = config
        self.policy = policy
        self.layout = layout
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.frame_seqlen = frame_seqlen
        self.capacity_frames = capacity_frames
        self._memory_labels = [FIRST_MEMORY_SLOT - index for index in range(len(policy.memory_slots))]

    def check(self, state_dict: dict[str, torch.Tensor]) -> list[LayerRestore]:
        """One validated :class:`LayerRestore` per layer; ``ValueError``/``TypeError`` for anything wrong."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
        if LAYOUT_KEY in state_dict:
            self._check_layout(state_dict[LAYOUT_KEY])
        plans = [self._plan_restore(index, state_dict) for index in range(self.num_layers)]
        expected_names = {LAYOUT_KEY} | {name for plan in plans for name in plan.names}
        unexpected = sorted(set(state_dict) - expected_names)
        if unexpected:
            raise ValueError(
                f"state_dict has unexpected entries: {unexpected[:5]} ({len(unexpected)} in all)"
            )
        return plans

    def _check_layout(self, encoded: torch.Tensor) -> None:
        try:
            saved = decode_json(encoded)
        except ValueError as error:
            raise ValueError(
                f"state_dict {LAYOUT_KEY!r} is not a layout written by MemRoPECache.state_dict(): {error}"
            ) from None
        mine = self.layout
        saved_config = saved.get("config", {}) if isinstance(saved, dict) else {}
        differences = [
            f"{name}={saved_config.get(name)!r} (this cache: {value!r})"
            for name, value in mine["config"].items()
            if saved_config.get(name, value) != value
        ]
        differences += [
            f"{name}={saved.get(name)!r} (this cache: {value!r})"
            for name, value in mine.items()
            if name != "config" and name not in CONVERTIBLE_LAYOUT_NAMES and saved.get(name) != value
        ]
        if differences:
            raise ValueError(
                "state_dict was saved by a cache with another configuration or geometry: "
                + ", ".join(differences)
            )

    def _plan_restore(self, index: int, state_dict: dict[str, torch.Tensor]) -> LayerRestore:
        """Validate layer ``index``'s entries of ``state_dict`` and say what to restore."""
        prefix = f"layers.{index}."
        for name in LAYER_STATE_NAMES:
            if prefix + name not in state_dict:
                raise ValueError(f"state_dict is missing {prefix + name!r}")
            if not isinstance(state_dict[prefix + name], torch.Tensor):
                raise TypeError(f"state_dict[{prefix + name!r}] must be a tensor")
        counters = [int(n) for n in state_dict[prefix + "counters"].flatten().tolist()]
        if len(counters) != 4:
            raise ValueError(f"{prefix}counters must hold 4 ints, got {counters}")
        filled, end_frame, chunk_start, chunk_slot = counters
        self._check_counters(prefix, filled, end_frame, chunk_start, chunk_slot)
        shape = (self.batch_size, filled * self.frame_seqlen, self.num_heads, self.head_dim)
        for name in ("keys", "values"):
            if tuple(state_dict[prefix + name].shape) != shape:
                raise ValueError(
                    f"{prefix + name} must have shape {list(shape)}, got {list(state_dict[prefix + name].shape)}"
                )
        slot_frames = [int(n) for n in state_dict[prefix + "slot_frames"].flatten().tolist()]
        if len(slot_frames) != filled:
            raise ValueError(f"{prefix}slot_frames must list {filled} slots, got {len(slot_frames)}")
        foreign = sorted(
            name
            for name in state_dict
            if name.startswith(prefix)
            and name[len(prefix) :]
            not in {*LAYER_STATE_NAMES, *SCALE_STATE_NAMES, *self.policy.memory_shapes()}
        )
        if foreign:
            raise ValueError(
                f"state_dict holds {foreign[0]}, which policy {self.config.policy!r} does not keep "
                "(was it saved by a cache with another policy?)"
            )
        memory = {
            name: state_dict[prefix + name]
            for name in self.policy.memory_shapes()
            if prefix + name in state_dict
        }
        self._check_memory(prefix, memory, has_memory_slots=FIRST_MEMORY_SLOT in slot_frames)
        self._check_slot_frames(prefix, slot_frames, filled, end_frame, chunk_start, chunk_slot)
        scales = self._check_scales(prefix, state_dict, shape)
        saved_scales = SCALE_STATE_NAMES if scales else ()
        names = {prefix + name for name in (*LAYER_STATE_NAMES, *memory, *saved_scales)}
        return LayerRestore(
            names,
            filled,
            end_frame,
            chunk_start,
            chunk_slot,
            slot_frames,
            memory,
            state_dict[prefix + "keys"],
            state_dict[prefix + "values"],
            *(scales or (None, None)),
        )

    def _check_scales(
        self, prefix: str, state_dict: dict[str, torch.Tensor], shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The layer's 8-bit scales ``(key_scales, value_scales)``, or ``None`` for keys and values stored as floats.

        Keys and values with scales must be 8-bit codes (``kv_storage.supported_kv_dtype_names``);
        without scales they must be floating.
        """
        present = [name for name in SCALE_STATE_NAMES if prefix + name in state_dict]
        if present and len(present) != len(SCALE_STATE_NAMES):
            raise ValueError(
                f"state_dict has {prefix + present[0]} but not the other 8-bit scales {list(SCALE_STATE_NAMES)}"
            )
        codes = {name: state_dict[prefix + name] for name in ("keys", "values")}
        if not present:
            for name, tensor in codes.items():
                if not tensor.is_floating_point():
                    raise TypeError(
                        f"{prefix + name} holds {tensor.dtype} without {prefix}{name[:-1]}_scales: 8-bit keys and "
                        "values need their scales, other entries must be floating"
                    )
            return None
        allowed = supported_kv_dtype_names()
        scale_shape = (*shape[:-1], 1)
        for name in ("keys", "values"):
            if dtype_name(codes[name].dtype) not in allowed:
                raise TypeError(
                    f"{prefix + name} must hold 8-bit codes ({', '.join(allowed)}) beside its scales, "
                    f"got {codes[name].dtype}"
                )
            scales = state_dict[prefix + name[:-1] + "_scales"]
            if not isinstance(scales, torch.Tensor) or not scales.is_floating_point():
                raise TypeError(f"{prefix + name[:-1]}_scales must be a floating tensor")
            if tuple(scales.shape) != scale_shape:
                raise ValueError(
                    f"{prefix + name[:-1]}_scales must have shape {list(scale_shape)}, got {list(scales.shape)}"
                )
        if codes["keys"].dtype != codes["values"].dtype:
            raise TypeError(
                f"{prefix}keys and values must share one 8-bit dtype, got {codes['keys'].dtype} and "
                f"{codes['values'].dtype}"
            )
        return state_dict[prefix + "key_scales"], state_dict[prefix + "value_scales"]

    def _check_counters(
        self, prefix: str, filled: int, end_frame: int, chunk_start: int, chunk_slot: int
    ) -> None:
        chunk = self.config.chunk_frames_at(chunk_start)
        capacity = self.capacity_frames
        counters = [filled, end_frame, chunk_start, chunk_slot]
        if filled == 0:
            if counters != [0, 0, 0, 0]:
                raise ValueError(f"{prefix}counters {counters} of an empty layer must all be 0")
            return
        consistent = (
            chunk <= filled <= capacity
            and chunk_slot == filled - chunk
            and chunk_start >= 0
            and end_frame == chunk_start + chunk
            and chunk_start >= chunk_slot
        )
        if not consistent:
            raise ValueError(
                f"{prefix}counters [filled, end_frame, chunk_start, chunk_slot] = {counters} are inconsistent for "
                f"chunks of {chunk} frames in a cache of {capacity} frames (the last chunk fills the last "
                "filled slots and ends at end_frame)"
            )

    def _check_slot_frames(
        self,
        prefix: str,
        slot_frames: list[int],
        filled: int,
        end_frame: int,
        chunk_start: int,
        chunk_slot: int,
    ) -> None:
        if filled == 0:
            return
        sink = self.config.sink_frames
        memory_labels = self._memory_labels
        has_memory = len(slot_frames) > sink and slot_frames[sink] == FIRST_MEMORY_SLOT
        real = [frame for frame in slot_frames if frame >= 0]
        expected_chunk = list(range(chunk_start, end_frame))
        problems = []
        if slot_frames[:sink] != list(range(min(sink, filled))):
            problems.append(f"the sink slots must hold frames 0..{sink - 1}")
        if has_memory and slot_frames[sink : sink + len(memory_labels)] != memory_labels:
            problems.append(f"memory slots must follow the sink as {memory_labels}")
        if any(frame < 0 for frame in slot_frames) and not has_memory:
            problems.append(
                f"memory labels are only allowed in slots {sink}..{sink + len(memory_labels) - 1}"
            )
        if len(real) + (len(memory_labels) if has_memory else 0) != filled:
            problems.append("slot labels must be frames >= 0 or the memory labels")
        if any(later <= earlier for earlier, later in itertools.pairwise(real)):
            problems.append("real frames must increase from slot to slot")
        if slot_frames[chunk_slot:] != expected_chunk:
            problems.append(
                f"the last {len(expected_chunk)} slots must hold the chunk's frames {expected_chunk}"
            )
        if not self.config.bounded and slot_frames != list(range(filled)):
            problems.append("the unbounded 'full' policy keeps every frame at its global position")
        if problems:
            raise ValueError(f"{prefix}slot_frames {slot_frames} are inconsistent: " + "; ".join(problems))

    def _check_memory(self, prefix: str, memory: dict[str, torch.Tensor], *, has_memory_slots: bool) -> None:
        shapes = self.policy.memory_shapes()
        layer = prefix.split(".")[1]
        if not shapes:
            return  # names this policy does not keep are reported as unexpected entries
        if memory and set(memory) != set(shapes):
            raise ValueError(
                f"state_dict has only part of layer {layer}'s memory: {sorted(memory)} of {sorted(shapes)}"
            )
        if bool(memory) != has_memory_slots:
            raise ValueError(
                f"{prefix}slot_frames {'lack' if memory else 'have'} memory slots but the state "
                f"{'has' if memory else 'lacks'} the memory tensors"
            )
        for name, tensor in memory.items():
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise TypeError(f"{prefix + name} must be a floating tensor")
            if tuple(tensor.shape) != shapes[name]:
                raise ValueError(
                    f"{prefix + name} must have shape {list(shapes[name])} for policy {self.config.policy!r} "
                    f"(pooling={self.config.pooling!r}), got {list(tensor.shape)}"
                )


def encode_json(value: Any) -> torch.Tensor:
    """``value`` as JSON in a uint8 tensor (state dicts hold tensors only)."""
    return torch.tensor(list(json.dumps(value, sort_keys=True).encode()), dtype=torch.uint8)


def decode_json(tensor: torch.Tensor) -> Any:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.ndim != 1:
        raise ValueError("expected a 1-d uint8 tensor")
    try:
        return json.loads(bytes(tensor.tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(str(error)) from None
