"""Device arguments: ``"cuda:1"``, ``torch.device(...)`` or an int (a CUDA index) as a ``torch.device``."""

from __future__ import annotations

import torch

__all__ = ["DEVICE_CHOICES", "parse_device"]

DEVICE_CHOICES = "'cpu', 'cuda', 'cuda:N', 'mps' or 'meta'"


def parse_device(spec: object, argument: str) -> torch.device:
    """``spec`` as a ``torch.device`` (surrounding spaces and case ignored: ``" CUDA:0 "`` -> ``cuda:0``).

    Raises:
        TypeError: ``spec`` is not a ``torch.device``, ``str`` or ``int``.
        ValueError: ``spec`` names no device (or is a negative index); the message names ``argument``.
    """
    if isinstance(spec, torch.device):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise TypeError(
            f"{argument} must be a device (torch.device, {DEVICE_CHOICES} or an int), got {spec!r}"
        )
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"{argument}: a CUDA index must be >= 0, got {spec}")
        return torch.device("cuda", spec)
    try:
        return torch.device(spec.strip().lower())
    except (RuntimeError, ValueError):
        raise ValueError(f"{argument}: unknown device {spec!r}; use {DEVICE_CHOICES}") from None
