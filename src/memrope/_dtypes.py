"""Names of torch dtypes, both ways: ``torch.bfloat16`` <-> ``"bfloat16"`` (and ``"bf16"``, ``"torch.bfloat16"``)."""

from __future__ import annotations

from collections.abc import Collection

import torch

__all__ = ["DTYPE_ALIASES", "dtype_name", "parse_dtype"]

#: Short names people type for floating dtypes, beside the full ``torch`` names.
DTYPE_ALIASES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "half": torch.float16,
    "fp64": torch.float64,
    "double": torch.float64,
    "float": torch.float32,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``: the attribute name under ``torch``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: object, argument: str, allowed: Collection[torch.dtype] | None = None) -> torch.dtype:
    """The floating ``torch.dtype`` that ``name`` names (case and a ``torch.`` prefix ignored).

    ``allowed`` restricts the answer (default: any floating dtype). A ``torch.dtype`` passes through.

    Raises:
        ValueError: ``name`` names no floating dtype, or one outside ``allowed``; the message names
            ``argument`` and the accepted names.
    """
    if isinstance(name, torch.dtype):
        dtype: object = name
    elif isinstance(name, str):
        key = name.strip().lower().removeprefix("torch.")
        dtype = DTYPE_ALIASES.get(key, getattr(torch, key, None))
    else:
        dtype = None
    choices = sorted(dtype_name(d) for d in allowed) if allowed is not None else None
    if (
        not isinstance(dtype, torch.dtype)
        or not dtype.is_floating_point
        or (allowed is not None and dtype not in allowed)
    ):
        expected = (
            f"one of {', '.join(choices)}"
            if choices
            else "a floating torch dtype such as float32 or bfloat16"
        )
        raise ValueError(f"{argument} must name {expected}, got {name!r}")
    return dtype
