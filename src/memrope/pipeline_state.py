"""Checkpoint files of :class:`~memrope.pipeline.CausalInferencePipeline` runs: format, save, read, upgrade.

A checkpoint is one safetensors file: the cache tensors (prefixed ``cache.``), the CPU generator state,
the prompt embeddings, the tensors of the initial noise state (``noise.``), the prompt-switch embeddings
(``switch_embeds.<i>``), the kept clean latents (``history``) and the given first latents not yet
written into the cache (``initial_latents``); everything else (settings, position,
the non-tensor noise state, the switch frames) is JSON under the ``memrope_pipeline_state`` metadata key.
Versions 1 and 2 stay readable and are upgraded to the current form (:func:`upgrade_state`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from memrope._dtypes import dtype_name
from memrope._files import atomic_replace
from memrope.loading import check_safetensors_file

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "PathLike",
    "atomic_save",
    "check_state",
    "read_state_file",
    "save_state_file",
    "upgrade_state",
]

STATE_FORMAT = "memrope.pipeline_state"
STATE_VERSION = 3  # 3: prompt switches; 2: the initial noise is an InitialNoise state; 1: the noise tensor
_READABLE_VERSIONS = (1, 2, 3)
_META_KEY = "memrope_pipeline_state"
_CACHE_PREFIX = "cache."
_NOISE_PREFIX = "noise."
_SWITCH_PREFIX = "switch_embeds."
_HISTORY_KEY = "history"
_INITIAL_KEY = "initial_latents"
PathLike = str | os.PathLike[str]


def save_state_file(state: dict[str, Any], path: Path) -> None:
    """Write a pipeline state (:meth:`~memrope.pipeline.CausalInferencePipeline.state_dict` form) to ``path``.

    Tensors go to the safetensors file (moved to the CPU), the rest to its metadata as JSON; the file is
    replaced atomically. A version-1 state is upgraded first.
    """
    state = upgrade_state(state)
    tensors = {_CACHE_PREFIX + name: tensor for name, tensor in state["cache"].items()}
    tensors.update(generator_state=state["generator_state"], text_embeds=state["text_embeds"])
    switch_frames = []
    for index, (frame, embeds) in enumerate(state.get("switches", ())):
        switch_frames.append(frame)
        tensors[f"{_SWITCH_PREFIX}{index}"] = embeds
    for key in (_HISTORY_KEY, _INITIAL_KEY):
        if state.get(key) is not None:
            tensors[key] = state[key]
    noise_info = {}
    for name, value in state["noise"].items():
        if isinstance(value, torch.Tensor):
            tensors[_NOISE_PREFIX + name] = value
        else:
            noise_info[name] = value
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    meta = {**state["meta"], "noise": noise_info, "switch_frames": switch_frames}
    atomic_save(tensors, {_META_KEY: json.dumps(meta)}, path)


def read_state_file(path: PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_state_file` as it was saved (CPU tensors, not upgraded).

    The caller checks it (:func:`check_state`) and upgrades it (:func:`upgrade_state`).

    Raises:
        ValueError: when the file is empty, truncated or not a pipeline checkpoint
            (:class:`~memrope.loading.CheckpointFormatError` for the first two).
        NonFiniteError: a tensor of the checkpoint holds NaN or infinity.
    """
    check_safetensors_file(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except SafetensorError as err:
        raise ValueError(
            f"{os.fspath(path)!r} cannot be read as a safetensors checkpoint ({err}); resume from another "
            "checkpoint or start over"
        ) from err
    if _META_KEY not in metadata:
        raise ValueError(
            f"{os.fspath(path)!r} is not a memrope pipeline checkpoint (no {_META_KEY!r} metadata)"
        )
    meta = json.loads(metadata[_META_KEY])
    cache = {name[len(_CACHE_PREFIX) :]: t for name, t in tensors.items() if name.startswith(_CACHE_PREFIX)}
    state = {"cache": cache, "meta": meta}
    names = (
        ("generator_state", "text_embeds", "noise")
        if meta.get("version") == 1
        else ("generator_state", "text_embeds")
    )
    for name in names:
        if name not in tensors:
            raise ValueError(f"{os.fspath(path)!r} is missing the tensor {name!r}")
        state[name] = tensors[name]
    if meta.get("version") != 1:
        noise = meta.pop("noise", None)
        if not isinstance(noise, dict):
            raise ValueError(f"{os.fspath(path)!r} has no initial noise state")
        noise.update(
            (name[len(_NOISE_PREFIX) :], t) for name, t in tensors.items() if name.startswith(_NOISE_PREFIX)
        )
        state["noise"] = noise
    switch_frames = meta.pop("switch_frames", [])
    try:
        state["switches"] = [
            (frame, tensors[f"{_SWITCH_PREFIX}{i}"]) for i, frame in enumerate(switch_frames)
        ]
    except KeyError as missing:
        raise ValueError(f"{os.fspath(path)!r} is missing the tensor {missing.args[0]!r}") from None
    state["history"] = tensors.get(_HISTORY_KEY)
    state["initial_latents"] = tensors.get(_INITIAL_KEY)
    return state


#: The value of a setting in states written before it was saved.
_SETTINGS_BEFORE_THEY_WERE_SAVED: dict[str, Any] = {"noised_context": False}


def check_state(state: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse a state of another format or version, or saved with other ``settings`` than the resuming pipeline's."""
    meta = state.get("meta", {})
    if meta.get("format") != STATE_FORMAT or meta.get("version") not in _READABLE_VERSIONS:
        raise ValueError(
            f"resume_from must be a {STATE_FORMAT} version {STATE_VERSION} state, "
            f"got format={meta.get('format')!r} version={meta.get('version')!r}"
        )
    for name, expected in settings.items():
        if meta.get(name, _SETTINGS_BEFORE_THEY_WERE_SAVED.get(name)) != expected:
            raise ValueError(
                f"resume_from was saved with {name}={meta.get(name)!r} but this pipeline has "
                f"{name}={expected!r}; resume with a pipeline built the same way"
            )


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 state (``noise``: the unused initial noise tensor) in the current form."""
    noise = state.get("noise")
    if not isinstance(noise, torch.Tensor):
        return state
    meta = state["meta"]
    frames_used = meta.get("start_frame")
    initial = {
        "mode": "eager",
        "num_frames": meta.get("num_frames"),
        "frames_used": frames_used,
        "frame_shape": list(noise.shape[2:]),
        "dtype": dtype_name(noise.dtype),
        "remaining": noise,
    }
    return {**state, "noise": initial, "meta": {**meta, "version": STATE_VERSION}}


def atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write a safetensors file next to ``path`` and move it into place (:func:`memrope._files.atomic_replace`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_replace(path) as temporary:
        save_file(tensors, temporary, metadata=metadata)
