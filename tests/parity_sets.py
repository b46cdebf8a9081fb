"""Which parity sets the parity tests run, and the call replay they share.

The sets in ``tests/data/parity`` (vectors of the official implementation) always run; a directory
named by ``$MEMROPE_PARITY_DIR`` adds its sets, and its copy of a bundled name replaces ours.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from memrope.cache import MemRoPECache
from memrope.models.wan import CausalWanModel
from memrope.testing.parity import PARITY_DIR_ENV, ParitySet, collect_parity_sets

BUNDLED_PARITY_DIR = Path(__file__).resolve().parent / "data" / "parity"
EXTRA_PARITY_DIR = os.environ.get(PARITY_DIR_ENV) or None
PARITY_SETS: list[Path] = collect_parity_sets(BUNDLED_PARITY_DIR, EXTRA_PARITY_DIR)
PARITY_IDS: list[str] = [path.stem for path in PARITY_SETS]
TOLERANCE = 1e-4  # max abs error against the official vectors (float32 agrees to about 1e-6)


def assert_replay_within_tolerance(
    name: str, calls: int, flow_errors: list[float], cache_errors: list[tuple[int, float, float]]
) -> None:
    """Every call's flow and every chunk's layer-0 cache contents within :data:`TOLERANCE` (see :func:`replay_calls`)."""
    assert len(flow_errors) == calls
    worst_call = max(range(len(flow_errors)), key=flow_errors.__getitem__)
    assert flow_errors[worst_call] < TOLERANCE, (
        f"{name} call {worst_call}: flow max abs error {flow_errors[worst_call]:.3g}"
    )
    for chunk, key_error, value_error in cache_errors:
        assert key_error < TOLERANCE and value_error < TOLERANCE, (
            f"{name} chunk {chunk}: cache error k={key_error:.3g} v={value_error:.3g}"
        )


def replay_calls(
    parity: ParitySet, model: CausalWanModel, cache: MemRoPECache
) -> tuple[list[float], list[tuple[int, float, float]]]:
    """Feed every recorded call in order through ``model`` with ``cache``.

    Returns the max abs flow error of each call, and ``(chunk, key error, value error)`` of layer 0's
    un-roped cache contents (``cache.layer_contents(0)``) against ``cache{chunk}.k0/v0`` after
    each chunk's last call.
    """
    tensors = parity.tensors
    context = model.encode_context(tensors["context"])
    flow_errors: list[float] = []
    cache_errors: list[tuple[int, float, float]] = []
    chunk = 0
    with torch.no_grad():
        for position, call in enumerate(parity.calls):
            flow = model(
                tensors[f"call{call.index}.x"],
                tensors[f"call{call.index}.t"],
                context,
                cache=cache,
                start_frame=call.start_frame,
            )
            flow_errors.append((flow - tensors[f"call{call.index}.flow"]).abs().max().item())
            last_of_chunk = (
                position + 1 == len(parity.calls)
                or parity.calls[position + 1].start_frame != call.start_frame
            )
            if last_of_chunk:
                keys, values = cache.layer_contents(0)
                expected_keys, expected_values = tensors[f"cache{chunk}.k0"], tensors[f"cache{chunk}.v0"]
                assert keys.shape == expected_keys.shape, f"chunk {chunk}: cache holds {tuple(keys.shape)}"
                cache_errors.append(
                    (
                        chunk,
                        (keys - expected_keys).abs().max().item(),
                        (values - expected_values).abs().max().item(),
                    )
                )
                chunk += 1
    return flow_errors, cache_errors
