"""Where the DiT, its cache, the text encoder and the VAE live: one device, or split over several.

* :func:`plan_devices` makes a :class:`DevicePlan`: ``"single"`` puts everything on one device
  (optionally keeping the text encoder and the VAE on the CPU between uses); ``"split"`` is the
  official 2-GPU layout (docs/design.md §10): the embeddings and blocks ``0 .. n/2-1`` on the first device,
  blocks ``n/2 .. n-1``, the head and the VAE on the second, the text encoder swapped in from the
  CPU; ``"auto"`` picks the first of these that fits in the free GPU memory.
* :func:`place_model` moves a :class:`~memrope.models.wan.CausalWanModel` (or any model with the
  same module names) onto the devices of a plan with plain ``.to(device)`` calls. No hooks are
  installed: the model's forward moves activations between blocks itself, and
  ``model.new_cache(...)`` puts each layer's cache on its block's device, so the cache is never
  copied across devices.
* Which modules are placed is declared by the model class, in forward order, as diffusers declares
  ``_no_split_modules``: ``CausalWanModel._placeable_modules = ("patch_embedding", ..., "blocks.*",
  "head")`` (:func:`module_layout` reads it). A model of another family declares its own.
* :func:`offloaded` moves a module (text encoder, VAE) to its device for a ``with`` block and back
  to the CPU afterwards.

The device map uses accelerate's format (``{"patch_embedding": device, ..., "blocks.0": device,
..., "head": device}``) so it can be handed to accelerate's tools, but nothing here needs
accelerate: the memory model is the analytic :class:`~memrope.memory_plan.MemoryEstimate` (the KV cache,
which accelerate does not see, is the larger half of it). The text encoder can run on the CPU
(``plan_devices(text_encoder="cpu")``, or ``"auto"``: there when its phase does not fit the GPU).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from memrope._device_spec import parse_device
from memrope._validation import check_int

__all__ = [
    "PLACEABLE_MODULES_ATTRIBUTE",
    "PLAN_MODES",
    "TEXT_ENCODER_CHOICES",
    "CudaMemoryProbe",
    "DevicePlan",
    "MemoryBreakdown",
    "MemoryProbe",
    "ModuleLayout",
    "NotEnoughMemoryError",
    "StaticMemoryProbe",
    "default_device",
    "module_layout",
    "offloaded",
    "place_model",
    "plan_devices",
    "single_device_need",
    "split_device_needs",
]

PLAN_MODES = ("auto", "single", "split")
#: Where ``plan_devices(text_encoder=...)`` runs the text encoder.
TEXT_ENCODER_CHOICES = ("auto", "gpu", "cpu")
PLACED_MODES = ("single", "split")
#: The class attribute naming a model's top-level modules in forward order, the block list as ``"name.*"``.
PLACEABLE_MODULES_ATTRIBUTE = "_placeable_modules"
BLOCK_LIST_SUFFIX = ".*"
GIB = 1024**3

DeviceLike = torch.device | str | int
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class ModuleLayout:
    """The placeable modules a model class declares (:data:`PLACEABLE_MODULES_ATTRIBUTE`), parsed.

    Attributes:
        inputs: modules before the blocks (the embeddings): placed on the first device.
        blocks: name of the block list (an ``nn.ModuleList``); block ``i`` is the module ``f"{blocks}.{i}"``.
        outputs: modules after the blocks (the head): placed on the last device.
    """

    inputs: tuple[str, ...]
    blocks: str
    outputs: tuple[str, ...]

    def block_name(self, index: int) -> str:
        """The module name of block ``index``, e.g. ``"blocks.3"``."""
        return f"{self.blocks}.{index}"


def module_layout(model: nn.Module | type[nn.Module] | None = None) -> ModuleLayout:
    """The placeable modules of ``model``: an instance or a class (default: the Wan ``CausalWanModel``).

    Read from the class attribute ``_placeable_modules``: the top-level module names in forward
    order, exactly one of them the block list written ``"name.*"``.

    Raises:
        TypeError: ``model`` is not a module or module class.
        ValueError: the model declares no ``_placeable_modules``, or not in that form.
    """
    if model is None:
        from memrope.models.wan import CausalWanModel  # the default family; imported on use

        model = CausalWanModel
    model_class = model if isinstance(model, type) else type(model)
    if not issubclass(model_class, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a Module class, got {model_class.__name__}")
    declared = getattr(model_class, PLACEABLE_MODULES_ATTRIBUTE, None)
    example = '("patch_embedding", ..., "blocks.*", "head")'
    if declared is None:
        raise ValueError(
            f"{model_class.__name__} declares no {PLACEABLE_MODULES_ATTRIBUTE}: add the class attribute "
            f"{PLACEABLE_MODULES_ATTRIBUTE} = {example} (its top-level modules in forward order)"
        )
    names = tuple(declared) if isinstance(declared, (tuple, list)) else ()
    lists = [
        index
        for index, name in enumerate(names)
        if isinstance(name, str) and name.endswith(BLOCK_LIST_SUFFIX)
    ]
    valid = (
        names
        and all(isinstance(name, str) and name.removesuffix(BLOCK_LIST_SUFFIX) for name in names)
        and len(set(names)) == len(names)
        and len(lists) == 1
    )
    if not valid:
        raise ValueError(
            f"{model_class.__name__}.{PLACEABLE_MODULES_ATTRIBUTE} must be distinct module names in forward "
            f"order with exactly one block list written 'name.*', e.g. {example}; got {declared!r}"
        )
    split = lists[0]
    return ModuleLayout(names[:split], names[split].removesuffix(BLOCK_LIST_SUFFIX), names[split + 1 :])


def __getattr__(name: str) -> Any:
    """Deprecated constants, now read from ``CausalWanModel._placeable_modules``."""
    if name in ("EMBEDDING_MODULES", "HEAD_MODULE"):
        warnings.warn(
            f"memrope.devices.{name} is deprecated: the placeable modules are declared on the model class; "
            "use memrope.devices.module_layout(model).inputs / .outputs",
            DeprecationWarning,
            stacklevel=2,
        )
        layout = module_layout()
        return layout.inputs if name == "EMBEDDING_MODULES" else layout.outputs[-1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class NotEnoughMemoryError(RuntimeError):
    """``plan_devices(mode="auto")`` found no layout that fits in the free GPU memory."""


class MemoryBreakdown(Protocol):
    """Bytes a run needs per component (:class:`memrope.memory_plan.MemoryEstimate` is one).

    Explicit numbers: build a ``MemoryEstimate(weights=..., cache=..., activations=...,
    text_encoder=..., vae=..., overhead=...)``.
    """

    @property
    def weights(self) -> int: ...

    @property
    def cache(self) -> int: ...

    @property
    def activations(self) -> int: ...

    @property
    def text_encoder(self) -> int: ...

    @property
    def vae(self) -> int: ...

    @property
    def overhead(self) -> int: ...


class MemoryProbe(Protocol):
    """Which accelerators are visible and how much memory each has free (injectable for tests)."""

    def accelerators(self) -> list[torch.device]:
        """The visible CUDA devices, ``cuda:0 .. cuda:N-1`` (empty without CUDA)."""
        ...

    def free_bytes(self, device: torch.device) -> int:
        """Free memory of ``device`` in bytes."""
        ...


class CudaMemoryProbe:
    """The real probe: ``torch.cuda.device_count()`` and ``torch.cuda.mem_get_info``."""

    def accelerators(self) -> list[torch.device]:
        if not torch.cuda.is_available():
            return []
        return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]

    def free_bytes(self, device: torch.device) -> int:
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)


class StaticMemoryProbe:
    """A probe answering from fixed numbers: ``StaticMemoryProbe({"cuda:0": 80 * 2**30, ...})``."""

    def __init__(self, free: Mapping[DeviceLike, int]) -> None:
        self._free = {parse_device(spec, "free"): int(count) for spec, count in free.items()}

    def accelerators(self) -> list[torch.device]:
        return list(self._free)

    def free_bytes(self, device: torch.device) -> int:
        return self._free[device]


@dataclass(frozen=True)
class DevicePlan:
    """Where every part of a run lives.

    Attributes:
        mode: ``"single"`` or ``"split"``.
        devices: the devices used, in block order (one for ``single``).
        device_map: accelerate-style map of the DiT's top-level modules and blocks to devices, in
            forward order (the inputs first, then the blocks ``name.i``, the outputs last).
        vae_device: where the VAE decodes.
        text_encoder_device: where the text encoder encodes.
        offload_text_encoder: the text encoder waits on the CPU and visits its device per use.
        offload_vae: the VAE waits on the CPU and visits its device per use.
        needed_bytes: estimated peak bytes per device (``None`` without a memory estimate).
    """

    mode: str
    devices: tuple[torch.device, ...]
    device_map: Mapping[str, torch.device] = field(hash=False)
    vae_device: torch.device
    text_encoder_device: torch.device
    offload_text_encoder: bool
    offload_vae: bool
    needed_bytes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in PLACED_MODES:
            raise ValueError(f"mode must be one of {PLACED_MODES}, got {self.mode!r}")
        object.__setattr__(self, "devices", tuple(torch.device(d) for d in self.devices))
        mapping = {name: torch.device(device) for name, device in self.device_map.items()}
        if not mapping:
            raise ValueError("device_map must place at least one module")
        object.__setattr__(self, "device_map", MappingProxyType(mapping))
        stray = sorted({str(d) for d in mapping.values()} - {str(d) for d in self.devices})
        if stray:
            raise ValueError(f"device_map uses devices {stray} that are not in devices {self.devices}")
        if self.needed_bytes is not None and len(self.needed_bytes) != len(self.devices):
            raise ValueError(
                f"needed_bytes must hold one number per device ({len(self.devices)}), got {self.needed_bytes}"
            )

    @property
    def primary_device(self) -> torch.device:
        """The device of the first module (the embeddings): where latents and noise enter the model."""
        return next(iter(self.device_map.values()))

    @property
    def output_device(self) -> torch.device:
        """The device of the last module (the head): where the model's output comes out."""
        return list(self.device_map.values())[-1]

    @property
    def block_devices(self) -> tuple[torch.device, ...]:
        """The device of every block (``name.i`` entries), in order (layer ``i``'s cache lives on entry ``i``)."""
        return tuple(device for name, device in self.device_map.items() if _block_index(name) is not None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (devices as strings)."""
        return {
            "mode": self.mode,
            "devices": [str(device) for device in self.devices],
            "device_map": {name: str(device) for name, device in self.device_map.items()},
            "vae_device": str(self.vae_device),
            "text_encoder_device": str(self.text_encoder_device),
            "offload_text_encoder": self.offload_text_encoder,
            "offload_vae": self.offload_vae,
            "needed_bytes": None if self.needed_bytes is None else list(self.needed_bytes),
        }

    def describe(self) -> str:
        """A few readable lines: what sits on which device, and the estimated memory per device."""
        names = ", ".join(str(device) for device in self.devices)
        title = (
            f"single device: {names}"
            if self.mode == "single"
            else f"split over {len(self.devices)} devices: {names}"
        )
        lines = [title]
        for device in dict.fromkeys(self.devices):  # a device named twice is described once
            parts = _compact_module_names([n for n, d in self.device_map.items() if d == device])
            if device == self.vae_device and not self.offload_vae:
                parts.append("VAE")
            need = ""
            if self.needed_bytes is not None:
                total = sum(n for n, d in zip(self.needed_bytes, self.devices) if d == device)
                need = f" (~{total / GIB:.1f} GiB)"
            lines.append(f"  {device}: {', '.join(parts) or '(nothing)'}{need}")
        text = _component_line(self.text_encoder_device, self.offload_text_encoder)
        if self.text_encoder_device.type == "cpu" and self.primary_device.type != "cpu":
            text = "runs on the CPU (nothing of it on a GPU)"
        lines.append(f"  text encoder: {text}")
        lines.append(f"  VAE: {_component_line(self.vae_device, self.offload_vae)}")
        return "\n".join(lines)


def _component_line(device: torch.device, offload: bool) -> str:
    return f"waits on the CPU, moved to {device} for each use" if offload else f"resident on {device}"


def _compact_module_names(names: list[str]) -> list[str]:
    """``[..., "blocks.0", "blocks.1", "blocks.2", "head"]`` -> ``[..., "blocks.0-2", "head"]``."""
    compact: list[str] = []
    run: list[int] = []
    run_list = ""
    for name in [*names, ""]:
        index = _block_index(name)
        block_list = name.rpartition(".")[0]
        if index is not None and (not run or (block_list == run_list and index == run[-1] + 1)):
            run.append(index)
            run_list = block_list
            continue
        if run:
            compact.append(f"{run_list}.{run[0]}" + (f"-{run[-1]}" if len(run) > 1 else ""))
        run = [index] if index is not None else []
        run_list = block_list
        if index is None and name:
            compact.append(name)
    return compact


def _block_index(name: str) -> int | None:
    """``i`` of a block's module name ``"list.i"``; ``None`` for other modules."""
    block_list, _, suffix = name.rpartition(".")
    return int(suffix) if block_list and suffix.isdigit() else None


# ---------------------------------------------------------------------- argument checks
def _check_available(device: torch.device, probe: MemoryProbe) -> None:
    if device.type in ("cpu", "meta"):
        return
    if device.type == "cuda":
        visible = probe.accelerators()
        if (device.index is None and visible) or device in visible:
            return
        listed = ", ".join(str(d) for d in visible) or "none"
        raise ValueError(f"devices: {device} is not available here (visible CUDA devices: {listed})")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError):
        raise ValueError(f"devices: {device} is not available here") from None


def _check_devices(devices: object, probe: MemoryProbe) -> tuple[torch.device, ...] | None:
    if devices is None:
        return None
    if isinstance(devices, (str, torch.device, int)) or not isinstance(devices, Sequence):
        raise TypeError(
            f"devices must be a sequence of devices such as ['cuda:0', 'cuda:1'], got {devices!r}"
        )
    checked = tuple(parse_device(spec, "devices") for spec in devices)
    for device in checked:
        _check_available(device, probe)
    return checked


def _check_num_layers(num_layers: object) -> int:
    return check_int(num_layers, "num_layers", meaning="the model's block count")


def _even_boundaries(num_layers: int, parts: int) -> tuple[int, ...]:
    """First block of every device after the first, for ``parts`` near-equal contiguous groups."""
    return tuple(num_layers * part // parts for part in range(1, parts))


def _boundaries(split_at: int | Sequence[int] | None, num_layers: int, parts: int) -> tuple[int, ...]:
    """Validated first block index of devices ``1 .. parts-1``."""
    if split_at is None:
        return _even_boundaries(num_layers, parts)
    if isinstance(split_at, int) and not isinstance(split_at, bool):
        if parts != 2:
            raise ValueError(
                f"split_at as an int splits over exactly 2 devices, got {parts}; "
                f"give a sequence of {parts - 1} increasing block indices"
            )
        given: list[object] = [split_at]
    elif isinstance(split_at, Sequence) and not isinstance(split_at, str):
        given = list(split_at)
    else:
        raise TypeError(f"split_at must be an int, a sequence of ints or None, got {split_at!r}")
    boundaries = [b for b in given if isinstance(b, int) and not isinstance(b, bool)]
    valid = (
        len(boundaries) == len(given) == parts - 1
        and boundaries == sorted(set(boundaries))
        and all(1 <= b <= num_layers - 1 for b in boundaries)
    )
    if not valid:
        raise ValueError(
            f"split_at must be {parts - 1} strictly increasing block index(es) in 1..{num_layers - 1} "
            f"(the first block of each device after the first), got {split_at!r}"
        )
    return tuple(boundaries)


# ---------------------------------------------------------------------- memory model
def _memory_parts(memory: MemoryBreakdown) -> tuple[int, int, int | None, Any]:
    """``(transient activations, persistent activations, resident VAE weights or None, block split or None)``."""
    split = getattr(memory, "split", None)
    transient = memory.activations if split is None else split.transient
    return transient, memory.activations - transient, getattr(memory, "vae_weights", None), split


def _vae_extra(memory: MemoryBreakdown, transient: int, vae_weights: int | None, offload: bool) -> int:
    """Bytes the VAE and one call's activations add on the device that decodes."""
    if offload:  # the VAE visits between DiT calls and shares the room of the activations
        return max(transient, memory.vae)
    if vae_weights is None:
        return transient + memory.vae
    return vae_weights + max(transient, memory.vae - vae_weights)  # decoding runs between DiT calls


def single_device_need(memory: MemoryBreakdown, *, offload: bool, text_encoder: bool = True) -> int:
    """Peak bytes on one device holding everything.

    Prompts are encoded before the DiT is loaded, so the text encoder's phase and the generation phase
    do not add up; with ``text_encoder=False`` (it runs on the CPU) the text phase holds the overhead
    only. Offloaded, the VAE visits between DiT calls and shares the room of the activations. When
    ``memory`` says which part of the VAE is resident (``vae_weights``) and which activations are
    transient (``split.transient``), the VAE's decoding workspace shares the room of the transients too.
    """
    transient, persistent, vae_weights, _ = _memory_parts(memory)
    text_phase = (memory.text_encoder if text_encoder else 0) + memory.overhead
    resident = memory.weights + memory.cache + persistent + memory.overhead
    return max(text_phase, resident + _vae_extra(memory, transient, vae_weights, offload))


def split_device_needs(
    memory: MemoryBreakdown, block_counts: Sequence[int], *, offload: bool, text_encoder: bool = True
) -> tuple[int, ...]:
    """Peak bytes per device of a split over contiguous block groups of ``block_counts``.

    Each device holds its blocks' weights and cache layers and the activations of one call; the first
    also the embeddings and the text encoder's phase (unless ``text_encoder=False``), the last the head
    and the VAE. With ``memory.split`` (a :class:`~memrope.memory_plan.BlockSplit`) the shares are exact
    per block and per device; without it, weights and cache divide in proportion to the blocks.
    """
    transient, _, vae_weights, split = _memory_parts(memory)
    total = sum(block_counts)
    last = len(block_counts) - 1
    needs = []
    for position, count in enumerate(block_counts):
        if split is None:
            need = (memory.weights + memory.cache) * count // total + memory.activations + memory.overhead
            vae = max(memory.vae - memory.activations, 0) if offload else memory.vae
        else:
            need = count * split.per_block + split.per_device + memory.overhead
            need += (split.inputs if position == 0 else 0) + (split.outputs if position == last else 0)
            vae = _vae_extra(memory, transient, vae_weights, offload)
            need += transient if position != last else 0
        if position == last:
            need += vae
        if position == 0 and text_encoder:
            need = max(need, memory.text_encoder + memory.overhead)
        needs.append(need)
    return tuple(needs)


def _block_counts(boundaries: tuple[int, ...], num_layers: int) -> list[int]:
    edges = (0, *boundaries, num_layers)
    return [stop - start for start, stop in pairwise(edges)]


# ---------------------------------------------------------------------- plans
def _device_map(
    devices: tuple[torch.device, ...], boundaries: tuple[int, ...], num_layers: int, layout: ModuleLayout
) -> dict[str, torch.device]:
    """Inputs on the first device, blocks in contiguous groups, outputs on the last, in forward order."""
    mapping = {name: devices[0] for name in layout.inputs}
    edges = (0, *boundaries, num_layers)
    for device, start, stop in zip(devices, edges, edges[1:]):
        mapping.update({layout.block_name(index): device for index in range(start, stop)})
    mapping.update({name: devices[-1] for name in layout.outputs})
    return mapping


def _single_plan(
    device: torch.device,
    num_layers: int,
    offload: bool,
    memory: MemoryBreakdown | None,
    layout: ModuleLayout,
    text_on_gpu: bool = True,
) -> DevicePlan:
    offload = offload and device.type != "cpu"
    text_device = device if text_on_gpu else torch.device("cpu")
    return DevicePlan(
        mode="single",
        devices=(device,),
        device_map=_device_map((device,), (), num_layers, layout),
        vae_device=device,
        text_encoder_device=text_device,
        offload_text_encoder=offload and text_device.type != "cpu",
        offload_vae=offload,
        needed_bytes=None
        if memory is None
        else (single_device_need(memory, offload=offload, text_encoder=text_device.type != "cpu"),),
    )


def _split_plan(
    devices: tuple[torch.device, ...],
    boundaries: tuple[int, ...],
    num_layers: int,
    offload: bool,
    memory: MemoryBreakdown | None,
    layout: ModuleLayout,
    text_on_gpu: bool = True,
) -> DevicePlan:
    text_device = devices[0] if text_on_gpu else torch.device("cpu")
    counts = _block_counts(boundaries, num_layers)
    needs = (
        None
        if memory is None
        else split_device_needs(memory, counts, offload=offload, text_encoder=text_device.type != "cpu")
    )
    return DevicePlan(
        mode="split",
        devices=devices,
        device_map=_device_map(devices, boundaries, num_layers, layout),
        vae_device=devices[-1],
        text_encoder_device=text_device,
        offload_text_encoder=text_device.type != "cpu",
        offload_vae=offload and devices[-1].type != "cpu",
        needed_bytes=needs,
    )


def _free_bytes(probe: MemoryProbe, device: torch.device) -> int:
    """Free memory of ``device`` (``cuda`` without an index: the first CUDA device)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    return probe.free_bytes(device)


def _text_on_gpu(
    choice: str, device: torch.device, memory: MemoryBreakdown | None, probe: MemoryProbe
) -> bool:
    """Whether the text encoder runs on ``device`` (``choice`` ``"gpu"``/``"cpu"``/``"auto"``).

    ``"auto"``: on the GPU when its phase (``memory.text_encoder + memory.overhead``) fits in the free
    memory of ``device``, else on the CPU; on the GPU without a memory estimate (the default before the text encoder could run on the CPU).
    """
    if choice != "auto" or device.type == "cpu":
        return choice != "cpu"
    if memory is None or device.type != "cuda":
        return True
    return memory.text_encoder + memory.overhead <= _free_bytes(probe, device)


def _explicit_single(
    devices: tuple[torch.device, ...] | None,
    num_layers: int,
    offload: bool,
    memory: MemoryBreakdown | None,
    probe: MemoryProbe,
    layout: ModuleLayout,
    text_encoder: str,
) -> DevicePlan:
    if devices is None:
        visible = probe.accelerators()
        devices = (visible[0] if visible else torch.device("cpu"),)
    if len(devices) != 1:
        raise ValueError(
            f"mode='single' takes exactly 1 device in devices, got {len(devices)}: {list(devices)}"
        )
    text_on_gpu = _text_on_gpu(text_encoder, devices[0], memory, probe)
    return _single_plan(devices[0], num_layers, offload, memory, layout, text_on_gpu)


def _explicit_split(
    devices: tuple[torch.device, ...] | None,
    num_layers: int,
    offload: bool,
    split_at: int | Sequence[int] | None,
    memory: MemoryBreakdown | None,
    probe: MemoryProbe,
    layout: ModuleLayout,
    text_encoder: str,
) -> DevicePlan:
    if devices is None:
        devices = tuple(probe.accelerators())
        if len(devices) < 2:
            raise ValueError(
                f"mode='split' needs at least 2 devices; {len(devices)} CUDA device(s) visible "
                "(pass devices=...)"
            )
    if not 2 <= len(devices) <= num_layers:
        raise ValueError(
            f"mode='split' takes 2 to num_layers={num_layers} devices in devices, "
            f"got {len(devices)}: {list(devices)}"
        )
    boundaries = _boundaries(split_at, num_layers, len(devices))
    text_on_gpu = _text_on_gpu(text_encoder, devices[0], memory, probe)
    return _split_plan(devices, boundaries, num_layers, offload, memory, layout, text_on_gpu)


def _fits(plan: DevicePlan, free: Mapping[torch.device, int]) -> bool:
    used: dict[torch.device, int] = {}
    for device, need in zip(plan.devices, plan.needed_bytes or ()):
        used[device] = used.get(device, 0) + need
    return all(need <= free[device] for device, need in used.items())


def _auto_candidates(
    pool: list[torch.device],
    free: Mapping[torch.device, int],
    num_layers: int,
    offload: bool,
    split_at: int | Sequence[int] | None,
    memory: MemoryBreakdown,
    layout: ModuleLayout,
    text_encoder: str,
) -> Iterator[DevicePlan]:
    """Layouts from cheapest to most spread: one GPU, one GPU offloaded, then splits over 2, 3, ...
    GPUs (each without, then with, the VAE offloaded), on the GPUs with the most free memory, kept
    in ``pool`` order. With ``text_encoder="auto"`` each layout is tried with the text encoder on the
    GPU, then on the CPU (so one GPU with the text encoder on the CPU comes before two GPUs)."""
    offload_choices = (True,) if offload else (False, True)
    text_choices = {"gpu": (True,), "cpu": (False,), "auto": (True, False)}[text_encoder]
    ranked = sorted(pool, key=lambda device: -free[device])
    if split_at is None:
        split_sizes = list(range(2, min(len(pool), num_layers) + 1))
    else:
        parts = 2 if isinstance(split_at, int) else len(split_at) + 1
        split_sizes = [parts] if parts <= len(pool) else []
    for choice in offload_choices:
        for text_on_gpu in text_choices:
            yield _single_plan(ranked[0], num_layers, choice, memory, layout, text_on_gpu)
    for parts in split_sizes:
        chosen = tuple(device for device in pool if device in ranked[:parts])
        boundaries = _boundaries(split_at, num_layers, parts)
        for choice in offload_choices:
            for text_on_gpu in text_choices:
                yield _split_plan(chosen, boundaries, num_layers, choice, memory, layout, text_on_gpu)


def _layout_label(plan: DevicePlan) -> str:
    if plan.mode == "single":
        label = "1 GPU with the text encoder and VAE offloaded" if plan.offload_vae else "1 GPU"
    else:
        label = f"{len(plan.devices)} GPUs" + (" with the VAE offloaded" if plan.offload_vae else "")
    return label + (", text encoder on the CPU" if plan.text_encoder_device.type == "cpu" else "")


def _not_enough_memory(plans: list[DevicePlan], free: Mapping[torch.device, int]) -> NotEnoughMemoryError:
    def gib(count: int) -> str:
        return f"{count / GIB:.1f} GiB"

    options = [
        f"{_layout_label(plan)}: {' + '.join(gib(n) for n in plan.needed_bytes or ())}" for plan in plans
    ]
    available = ", ".join(f"{device} {gib(count)}" for device, count in free.items())
    return NotEnoughMemoryError(
        f"the run does not fit in the free GPU memory. Needed: {'; '.join(options)}. "
        f"Free: {available}. Free some memory, use a smaller dtype, batch or an 8-bit KV cache, "
        "or run on the CPU with mode='single', devices=['cpu']"
    )


def _auto_plan(
    devices: tuple[torch.device, ...] | None,
    num_layers: int,
    offload: bool,
    split_at: int | Sequence[int] | None,
    memory: MemoryBreakdown | None,
    probe: MemoryProbe,
    layout: ModuleLayout,
    text_encoder: str,
) -> DevicePlan:
    pool = list(dict.fromkeys(devices if devices is not None else probe.accelerators()))
    if not pool:
        return _single_plan(torch.device("cpu"), num_layers, offload, memory, layout)
    if any(device.type != "cuda" for device in pool):
        raise ValueError(
            f"mode='auto' chooses among CUDA devices, got devices={[str(d) for d in pool]}; "
            "use mode='single' or mode='split' to place on other devices"
        )
    if memory is None:
        raise ValueError(
            "mode='auto' with GPUs needs memory= (a MemoryEstimate such as preset.memory_estimate(dtype)) "
            "to choose a layout; or pass mode='single' or mode='split'"
        )
    free = {device: probe.free_bytes(device) for device in pool}
    plans = list(_auto_candidates(pool, free, num_layers, offload, split_at, memory, layout, text_encoder))
    for plan in plans:
        if _fits(plan, free):
            return plan
    raise _not_enough_memory(plans, free)


def plan_devices(
    mode: str = "auto",
    devices: Sequence[DeviceLike] | None = None,
    *,
    num_layers: int | None = None,
    offload: bool = False,
    split_at: int | Sequence[int] | None = None,
    memory: MemoryBreakdown | None = None,
    probe: MemoryProbe | None = None,
    model: nn.Module | type[nn.Module] | None = None,
    text_encoder: str = "gpu",
) -> DevicePlan:
    """Decide where the DiT blocks, its cache, the text encoder and the VAE go.

    Args:
        mode: ``"single"``: everything on one device (default: the first CUDA device, else the
            CPU). ``"split"``: blocks in contiguous groups over 2 or more devices (default: every
            visible GPU); embeddings on the first device, head and VAE on the last, the text
            encoder swapped in from the CPU onto the first (docs/design.md §10). ``"auto"``: with no GPU,
            the CPU; otherwise the first layout that fits in the free memory of ``devices`` (default:
            every visible GPU), in this order: one GPU (the one with the most free memory), the same
            with the text encoder and VAE offloaded, a split over the 2 GPUs with the most free
            memory, the same with the VAE offloaded, then over 3, 4, ... GPUs (each with the text
            encoder on the GPU, then on the CPU, when ``text_encoder="auto"``). Raises
            :class:`NotEnoughMemoryError` (needed and free bytes in the message) when none fits.
        devices: devices to use, e.g. ``["cuda:0", "cuda:1"]`` (ints are CUDA indices).
        num_layers: the model's block count (``model.config.num_layers``); may be left out when
            ``model`` is a model instance (its block list's length).
        offload: keep the text encoder and the VAE on the CPU between uses (no effect on the CPU).
            With ``"auto"``, ``True`` forces offloading; ``False`` still lets ``auto`` offload when
            that is what makes the run fit.
        split_at: first block of the second device (2 devices; default ``num_layers // 2``), or
            the first block of each device after the first (more devices; default: even groups).
        memory: the run's memory needs (``preset.memory_estimate(dtype, batch_size)``, text encoder on
            the GPU); needed by ``"auto"`` with GPUs and by ``text_encoder="auto"``, and recorded as
            ``needed_bytes`` by the other modes.
        probe: visible GPUs and their free memory (default :class:`CudaMemoryProbe`; tests and
            schedulers can pass a :class:`StaticMemoryProbe`).
        model: the model or its class, whose ``_placeable_modules`` name the modules the plan
            places (see :func:`module_layout`; default :class:`~memrope.models.wan.CausalWanModel`).
        text_encoder: where the text encoder runs: ``"gpu"`` (the first device; default), ``"cpu"``
            (``plan.text_encoder_device`` is the CPU: nothing of it on a GPU) or ``"auto"``: the GPU when
            its phase fits in the first device's free memory (``"auto"`` mode: the first layout that
            fits, the GPU tried first), else the CPU.

    Raises:
        ValueError: unknown ``mode`` or ``text_encoder``, wrong number of ``devices``, an unavailable
            device, ``split_at`` out of range or given to ``"single"``, bad ``num_layers``, a ``model``
            without ``_placeable_modules``.
        TypeError: ``num_layers`` left out without a model instance to count the blocks of.
        NotEnoughMemoryError: ``"auto"`` found no layout that fits.
    """
    if mode not in PLAN_MODES:
        raise ValueError(f"mode must be one of {PLAN_MODES}, got {mode!r}")
    if text_encoder not in TEXT_ENCODER_CHOICES:
        raise ValueError(f"text_encoder must be one of {TEXT_ENCODER_CHOICES}, got {text_encoder!r}")
    if not isinstance(offload, bool):
        raise TypeError(f"offload must be True or False, got {offload!r}")
    layout = module_layout(model)
    num_layers = _check_num_layers(_block_count(model, layout) if num_layers is None else num_layers)
    probe = CudaMemoryProbe() if probe is None else probe
    checked = _check_devices(devices, probe)
    if mode == "single":
        if split_at is not None:
            raise ValueError(
                f"split_at only applies to mode='split' or mode='auto', got mode='single' with {split_at!r}"
            )
        return _explicit_single(checked, num_layers, offload, memory, probe, layout, text_encoder)
    if mode == "split":
        return _explicit_split(checked, num_layers, offload, split_at, memory, probe, layout, text_encoder)
    return _auto_plan(checked, num_layers, offload, split_at, memory, probe, layout, text_encoder)


def _block_count(model: nn.Module | type[nn.Module] | None, layout: ModuleLayout) -> int:
    """The length of a model instance's block list (``num_layers`` left out)."""
    blocks = None if model is None or isinstance(model, type) else getattr(model, layout.blocks, None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(
            "num_layers is needed (the model's block count) unless model= is a model instance with its "
            f"block list {layout.blocks!r}"
        )
    return len(blocks)


# ---------------------------------------------------------------------- placement
def _covered(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _check_model_matches(model: nn.Module, plan: DevicePlan) -> None:
    module_names = {name for name, _ in model.named_modules()}
    missing = [name for name in plan.device_map if name not in module_names]
    if missing:
        raise ValueError(
            f"the plan places modules the model does not have: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (was it planned with num_layers={len(plan.block_devices)} "
            "for this model?)"
        )
    prefixes = list(plan.device_map)
    tensors = [name for name, _ in (*model.named_parameters(), *model.named_buffers())]
    uncovered = [name for name in tensors if not _covered(name, prefixes)]
    if uncovered:
        raise ValueError(
            f"the plan does not place these model tensors: {', '.join(uncovered[:5])}"
            f"{' ...' if len(uncovered) > 5 else ''} (was it planned with num_layers="
            f"{len(plan.block_devices)} for this model?)"
        )


def place_model(model: ModuleT, plan: DevicePlan, *, empty: bool = False) -> ModuleT:
    """Move ``model``'s modules in place onto the devices of ``plan.device_map``; returns ``model``.

    Every named module is moved with ``.to(device)`` (no hooks). After this, ``model.new_cache(...)``
    without ``device`` puts each layer's cache on its block's device.

    Args:
        model: a :class:`~memrope.models.wan.CausalWanModel` or any model with the same module names.
        plan: from :func:`plan_devices` with ``num_layers`` equal to the model's block count.
        empty: allocate uninitialised storage on the target devices (``module.to_empty``) instead of
            copying: for a model built on the ``meta`` device whose weights are loaded afterwards.

    Raises:
        ValueError: the plan names modules the model lacks, or leaves some of its tensors unplaced.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(plan, DevicePlan):
        raise TypeError(f"plan must be a DevicePlan (from plan_devices), got {type(plan).__name__}")
    _check_model_matches(model, plan)
    for name, device in plan.device_map.items():
        module = model.get_submodule(name)
        if empty:
            module.to_empty(device=device)
        else:
            module.to(device)
    return model


@contextmanager
def offloaded(
    module: ModuleT, device: DeviceLike, *, home: DeviceLike = "cpu", enabled: bool = True
) -> Iterator[ModuleT]:
    """Move ``module`` to ``device`` for the ``with`` block, and back to ``home`` afterwards.

    The module goes back even when the block raises. With ``enabled=False`` nothing moves (the
    module stays where it is), so callers can write one code path for both settings::

        with offloaded(vae, plan.vae_device, enabled=plan.offload_vae):
            frames = decoder.decode_chunk(latents)
    """
    if not enabled:
        yield module
        return
    module.to(parse_device(device, "device"))
    try:
        yield module
    finally:
        module.to(parse_device(home, "home"))
