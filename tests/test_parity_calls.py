"""Parity level 1 (call replay): every official model call and cache dump of every parity set.

The bundled sets (``tests/data/parity``) always run; a set dropped into ``$MEMROPE_PARITY_DIR`` is
replayed too, without code changes (see ``parity_sets.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from parity_sets import (
    BUNDLED_PARITY_DIR,
    PARITY_IDS,
    PARITY_SETS,
    TOLERANCE,
    assert_replay_within_tolerance,
    replay_calls,
)

from memrope.testing.parity import ParitySet, load_parity_set


def test_bundled_parity_sets_are_present() -> None:
    names = {path.stem for path in PARITY_SETS}
    assert {"ema", "eviction"} <= names, f"bundled parity sets missing from {BUNDLED_PARITY_DIR}"


def _replay(parity: ParitySet) -> tuple[list[float], list[tuple[int, float, float]]]:
    """Replay the set's calls through memrope's model and cache (see :func:`replay_calls`)."""
    model = parity.build_model()
    cache = model.new_cache(parity.cache_config, parity.pipeline.batch, parity.pipeline.latent_hw)
    return replay_calls(parity, model, cache)


@pytest.mark.parametrize("path", PARITY_SETS, ids=PARITY_IDS)
def test_call_replay_matches_official(path: Path) -> None:
    parity = load_parity_set(path)
    flow_errors, cache_errors = _replay(parity)
    assert_replay_within_tolerance(parity.name, len(parity.calls), flow_errors, cache_errors)


@pytest.mark.parametrize("path", PARITY_SETS, ids=PARITY_IDS)
def test_policies_differ_once_the_cache_is_full(path: Path) -> None:
    """The vectors discriminate: the other policy misses them by far more than the tolerance."""
    parity = load_parity_set(path)
    config = parity.cache_config
    if not config.bounded:
        pytest.skip("unbounded set: no eviction policy to swap")
    if parity.pipeline.num_frames <= config.cache_frames:
        pytest.skip("the cache never fills: every policy gives the same video")
    other = "sink" if config.policy == "memrope" else "memrope"
    try:
        other_config = dataclasses.replace(config, policy=other)
    except ValueError as error:
        pytest.skip(f"the other policy does not fit this cache: {error}")
    swapped = dataclasses.replace(parity, cache_config=other_config)
    flow_errors, _ = _replay(swapped)
    assert max(flow_errors) > 100 * TOLERANCE
