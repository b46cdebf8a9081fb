"""Merging PEFT-style LoRA layers in place, and undoing it, for adapters that attach to LoRA-tuned models.

A LoRA layer here is any module with ``base_layer`` (the Linear it wraps), ``lora_A`` / ``lora_B``
(dicts of Linear factors per adapter name) and ``scaling`` (per adapter), as PEFT's
``peft.tuners.lora.Linear``. Unmerging subtracts the same delta, so the weights come back up to
float rounding, not bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["active_adapters", "lora_delta", "lora_layers", "merge_lora_layer", "unmerge_lora_layer"]


def lora_layers(model: Any) -> list[Any]:
    """The PEFT-style LoRA layers of ``model``: modules with ``base_layer``, ``lora_A`` and ``lora_B``."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "base_layer") and hasattr(m, "lora_A") and hasattr(m, "lora_B")
    ]


def active_adapters(layer: Any) -> list[str]:
    """Names of the adapters of ``layer`` that are active (PEFT's ``active_adapters``) and present."""
    active: Any = getattr(layer, "active_adapters", None)
    if active is None:
        active = getattr(layer, "active_adapter", "default")
    names: list[str] = [active] if isinstance(active, str) else list(active)
    return [name for name in names if name in layer.lora_A and name in layer.lora_B]


def lora_delta(layer: Any, name: str) -> torch.Tensor:
    """``scale * B @ A`` of adapter ``name`` in float32 ``[out, in]``."""
    if getattr(layer, "use_dora", {}).get(name, False):
        raise NotImplementedError(f"merging DoRA adapters is not supported ({name!r})")
    lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
    if not (isinstance(lora_a, nn.Linear) and isinstance(lora_b, nn.Linear)):
        raise NotImplementedError(f"only Linear LoRA adapters can be merged, got {type(lora_a).__name__}")
    delta = lora_b.weight.float() @ lora_a.weight.float()
    delta = delta * float(layer.scaling[name])
    if getattr(layer, "fan_in_fan_out", False):
        delta = delta.T
    return delta


@torch.no_grad()
def merge_lora_layer(layer: Any) -> tuple[Any, list[str]] | None:
    """Merge the active adapters of one LoRA layer into its base weight; ``None`` if nothing to do.

    Uses the layer's own ``merge()`` when it has ``merge`` and ``unmerge`` (PEFT), else adds
    :func:`lora_delta` of each active adapter and records them in ``merged_adapters``. Returns
    ``(layer, names merged here)`` for :func:`unmerge_lora_layer`.
    """
    if getattr(layer, "merged", False) or getattr(layer, "merged_adapters", None):
        return None
    if callable(getattr(layer, "merge", None)) and callable(getattr(layer, "unmerge", None)):
        layer.merge()
        return layer, []
    names = active_adapters(layer)
    weight = layer.base_layer.weight
    for name in names:
        weight.copy_((weight.float() + lora_delta(layer, name).to(weight.device)).to(weight.dtype))
    merged = getattr(layer, "merged_adapters", None)
    if merged is None:
        layer.merged_adapters = merged = []
    merged.extend(names)
    return layer, names


@torch.no_grad()
def unmerge_lora_layer(layer: Any, names: list[str]) -> None:
    """Undo :func:`merge_lora_layer` given what it returned (``[]``: the layer's own ``unmerge()``)."""
    if not names:
        layer.unmerge()
        return
    weight = layer.base_layer.weight
    for name in reversed(names):
        weight.copy_((weight.float() - lora_delta(layer, name).to(weight.device)).to(weight.dtype))
        layer.merged_adapters.remove(name)
