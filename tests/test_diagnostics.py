"""Attention diagnostics: cache slot roles and attention hooks, AttentionMassRecorder against a float64
brute-force reference and known answers, through the tiny model, its JSON file, the plot and
``memrope plot-attention``."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import re
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memrope import CacheContext, MemRoPECache, MemRoPEConfig, rope_on_the_fly
from memrope.cache import SLOT_ROLES
from memrope.cli import main
from memrope.diagnostics import (
    ATTENTION_MASS_FORMAT,
    ATTENTION_MASS_VERSION,
    AttentionMassRecorder,
    check_attention_mass,
    configure_plot_attention,
    load_attention_mass,
    mean_shares_per_chunk,
    merge_roles,
    plot_attention_mass,
    role_attention_shares,
    run_plot_attention,
    statistics_roles,
)
from memrope.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CLIError
from memrope.presets import tiny_model

SETTINGS = settings(max_examples=25, deadline=None)
FRAME_SHAPE = (2, 3)
FRAME_SEQLEN = 6
HEADS = 2
HEAD_DIM = 12
# 1 sink + 2 memory + 3 recent + 2 chunk; 1 sink + 3 recent + 2 chunk; unbounded
MEMROPE = MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2)
SINK = MemRoPEConfig(policy="sink", cache_frames=6, sink_frames=1, chunk_frames=2)
FULL = MemRoPEConfig(policy="full", sink_frames=1, chunk_frames=2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="needs the plot extra"
)


def make_cache(
    config: MemRoPEConfig,
    *,
    layers: int = 1,
    batch: int = 1,
    frame_shape: tuple[int, int] = FRAME_SHAPE,
    head_dim: int = HEAD_DIM,
) -> MemRoPECache:
    return MemRoPECache(
        config,
        num_layers=layers,
        batch_size=batch,
        num_heads=HEADS,
        head_dim=head_dim,
        frame_shape=frame_shape,
    )


def call_all_layers(cache: MemRoPECache, start: int, frames: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One attention call per layer with random un-roped q, k, v of ``frames`` frames; the outputs."""
    shape = (cache.batch_size, frames * cache.frame_seqlen, cache.num_heads, cache.head_dim)
    outputs = []
    for layer in range(cache.num_layers):
        query, key, value = (torch.randn(shape, generator=gen) for _ in range(3))
        outputs.append(rope_on_the_fly(query, key, value, cache=cache, layer=layer, start_frame=start))
    return outputs


def run_video(
    cache: MemRoPECache, chunks: int, *, calls: int = 2, recache: bool = False, seed: int = 0
) -> list[torch.Tensor]:
    """``chunks`` chunks of ``calls`` calls each, then optionally a recache; every output in call order."""
    gen = torch.Generator().manual_seed(seed)
    chunk_frames = cache.config.chunk_frames
    outputs = []
    for chunk in range(chunks):
        for _ in range(calls):
            outputs += call_all_layers(cache, chunk * chunk_frames, chunk_frames, gen)
    if recache:
        with cache.recaching() as (start, frames):
            if frames:
                outputs += call_all_layers(cache, start, frames, gen)
    return outputs


def current_frames(cache: MemRoPECache, layer: int) -> range:
    """Global frames written by the layer's latest call (from the cache counters, not from slot_roles)."""
    window = cache.active_recache_window
    if window is not None:
        return range(window[0], window[0] + window[1])
    start = cache.layers[layer].chunk_start
    return range(start, start + cache.config.chunk_frames)


def roles_from_layout(cache: MemRoPECache, layer: int) -> list[str]:
    """The expected role of each slot, from the ``slot_layout`` labels."""
    roles = []
    for slot, label in enumerate(cache.slot_layout(layer)):
        if label in ("long", "short"):
            roles.append(label)
        elif int(label.removeprefix("f")) in current_frames(cache, layer):
            roles.append("current")
        elif slot < cache.config.sink_frames:
            roles.append("sink")
        else:
            roles.append("recent")
    return roles


def reference_shares(
    query: torch.Tensor, keys: torch.Tensor, roles: list[str], frame_seqlen: int, role_names: Sequence[str]
) -> torch.Tensor:
    """Brute force: the whole float64 probability matrix summed per role, ``[B, len(role_names)]``."""
    scores = torch.einsum("bqhd,bkhd->bhqk", query.double(), keys.double()) / query.shape[-1] ** 0.5
    probabilities = scores.softmax(dim=-1)
    token_roles = [roles[token // frame_seqlen] for token in range(keys.shape[1])]
    shares = torch.zeros(query.shape[0], len(role_names), dtype=torch.float64)
    for index, role in enumerate(role_names):
        mask = torch.tensor([token_role == role for token_role in token_roles])
        shares[:, index] = probabilities[..., mask].sum(dim=(1, 2, 3)) / (query.shape[1] * query.shape[2])
    return shares


def item_share_rows(record: dict[str, Any], role_names: Sequence[str] = SLOT_ROLES) -> torch.Tensor:
    return torch.tensor(
        [[item[role] for role in role_names] for item in record["item_shares"]], dtype=torch.float64
    )


small_configs = st.builds(
    lambda policy, sink, chunk, recent: MemRoPEConfig(
        policy=policy,
        sink_frames=sink,
        chunk_frames=chunk,
        cache_frames=sink + (2 if policy == "memrope" else 0) + recent + chunk,
    ),
    st.sampled_from(["memrope", "sink", "full"]),
    st.integers(0, 2),
    st.integers(1, 3),
    st.integers(0, 2),
)


# ---------------------------------------------------------------- slot roles
SINK_ROLE, LONG, SHORT, RECENT, CURRENT = SLOT_ROLES
EXPECTED_ROLES_PER_CHUNK = {
    "memrope": [
        [CURRENT] * 2,
        [SINK_ROLE, RECENT, CURRENT, CURRENT],
        [SINK_ROLE, *[RECENT] * 3, CURRENT, CURRENT],
        [SINK_ROLE, *[RECENT] * 5, CURRENT, CURRENT],
        [SINK_ROLE, LONG, SHORT, *[RECENT] * 3, CURRENT, CURRENT],  # first eviction
        [SINK_ROLE, LONG, SHORT, *[RECENT] * 3, CURRENT, CURRENT],  # steady state
    ],
    "sink": [
        [CURRENT] * 2,
        [SINK_ROLE, RECENT, CURRENT, CURRENT],
        [SINK_ROLE, *[RECENT] * 3, CURRENT, CURRENT],
        [SINK_ROLE, *[RECENT] * 3, CURRENT, CURRENT],  # first eviction
        [SINK_ROLE, *[RECENT] * 3, CURRENT, CURRENT],
        [SINK_ROLE, *[RECENT] * 3, CURRENT, CURRENT],
    ],
    "full": [
        [CURRENT] * 2,
        *[[SINK_ROLE, *[RECENT] * (2 * chunk - 1), CURRENT, CURRENT] for chunk in range(1, 6)],
    ],
}
EXPECTED_RECACHE_ROLES = {
    "memrope": [SINK_ROLE, LONG, SHORT, *[CURRENT] * 5],
    "sink": [SINK_ROLE, *[CURRENT] * 5],
    "full": [SINK_ROLE, *[CURRENT] * 11],
}


@pytest.mark.parametrize("config", [MEMROPE, SINK, FULL], ids=lambda config: config.policy)
def test_slot_roles_while_filling_at_first_eviction_steady_and_recaching(config: MemRoPEConfig) -> None:
    cache = make_cache(config, layers=2)
    assert cache.slot_roles() == [] and cache.last_call_kind() is None and cache.active_recache_window is None
    gen = torch.Generator().manual_seed(0)
    for chunk, expected in enumerate(EXPECTED_ROLES_PER_CHUNK[config.policy]):
        call_all_layers(cache, 2 * chunk, 2, gen)
        assert cache.slot_roles(0) == cache.slot_roles(1) == expected
        assert cache.slot_roles() == roles_from_layout(cache, 0)
        assert cache.last_call_kind(1) == "advance"
        call_all_layers(cache, 2 * chunk, 2, gen)
        assert cache.slot_roles() == expected and cache.last_call_kind(0) == "rewrite"
    with cache.recaching() as window:
        assert cache.active_recache_window == window
        assert cache.slot_roles() == EXPECTED_RECACHE_ROLES[config.policy]
        call_all_layers(cache, window[0], window[1], gen)
        assert cache.last_call_kind(1) == "recache"
    assert cache.active_recache_window is None
    assert cache.slot_roles() == EXPECTED_ROLES_PER_CHUNK[config.policy][-1]


@SETTINGS
@given(config=small_configs, chunks=st.integers(1, 7), recache=st.booleans())
def test_slot_roles_agree_with_the_slot_layout(config: MemRoPEConfig, chunks: int, recache: bool) -> None:
    cache = make_cache(config, frame_shape=(1, 1))
    gen = torch.Generator().manual_seed(chunks)
    for chunk in range(chunks):
        call_all_layers(cache, chunk * config.chunk_frames, config.chunk_frames, gen)
        roles = cache.slot_roles()
        assert roles == roles_from_layout(cache, 0)
        assert set(roles) <= set(SLOT_ROLES) and roles.count("current") == config.chunk_frames
    if recache:
        with cache.recaching():
            assert cache.slot_roles() == roles_from_layout(cache, 0)


def test_slot_roles_rejects_a_bad_layer() -> None:
    cache = make_cache(MEMROPE, layers=2)
    for layer in (2, -1, True, "0"):
        with pytest.raises(ValueError, match=r"layer must be an int in \[0, 2\)"):
            cache.slot_roles(layer)  # type: ignore[arg-type]


# ---------------------------------------------------------------- hooks
def test_hooks_see_the_roped_query_and_context_in_order_and_can_be_removed() -> None:
    cache, other = make_cache(MEMROPE, layers=2, batch=2), make_cache(MEMROPE)
    seen: list[tuple[str, int, tuple[int, ...], tuple[int, ...]]] = []

    def hook(name: str) -> Callable[[MemRoPECache, int, torch.Tensor, CacheContext], None]:
        def record(hook_cache: MemRoPECache, layer: int, query: torch.Tensor, context: CacheContext) -> None:
            assert hook_cache is cache
            seen.append((name, layer, tuple(query.shape), tuple(context.keys.shape)))

        return record

    first, second = (
        cache.register_attention_hook(hook("first")),
        cache.register_attention_hook(hook("second")),
    )
    assert len(cache.attention_hooks) == 2
    run_video(other, 2)  # another cache: no hook fires
    assert seen == []
    run_video(cache, 2, calls=1)
    assert seen == [
        ("first", 0, (2, 12, 2, 12), (2, 12, 2, 12)),
        ("second", 0, (2, 12, 2, 12), (2, 12, 2, 12)),
        ("first", 1, (2, 12, 2, 12), (2, 12, 2, 12)),
        ("second", 1, (2, 12, 2, 12), (2, 12, 2, 12)),
        ("first", 0, (2, 12, 2, 12), (2, 24, 2, 12)),
        ("second", 0, (2, 12, 2, 12), (2, 24, 2, 12)),
        ("first", 1, (2, 12, 2, 12), (2, 24, 2, 12)),
        ("second", 1, (2, 12, 2, 12), (2, 24, 2, 12)),
    ]
    first.remove()
    seen.clear()
    cache.reset()  # keeps hooks
    run_video(cache, 1, calls=1)
    assert [name for name, *_ in seen] == ["second", "second"]
    assert not any("hook" in name for name in cache.state_dict())
    second.remove()
    seen.clear()
    run_video(cache, 1, calls=1)
    assert seen == [] and cache.attention_hooks == ()


def test_register_attention_hook_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="hook must be callable"):
        make_cache(MEMROPE).register_attention_hook(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [MEMROPE, SINK, FULL], ids=lambda config: config.policy)
def test_recording_does_not_change_the_attention_output(config: MemRoPEConfig) -> None:
    plain, recorded = make_cache(config, layers=2, batch=2), make_cache(config, layers=2, batch=2)
    recorder = AttentionMassRecorder(query_block_size=5)
    recorder.attach(recorded)
    expected = run_video(plain, 6, recache=True)
    got = run_video(recorded, 6, recache=True)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert len(recorder.records) == 6 * 2 * 2 + 2
    for name, tensor in plain.state_dict().items():
        assert torch.equal(recorded.state_dict()[name], tensor), name


# ---------------------------------------------------------------- the recorder
@SETTINGS
@given(
    config=small_configs,
    chunks=st.integers(1, 6),
    batch=st.integers(1, 2),
    block=st.integers(1, 8),
    recache=st.booleans(),
)
def test_shares_sum_to_one_for_every_record(
    config: MemRoPEConfig, chunks: int, batch: int, block: int, recache: bool
) -> None:
    cache = make_cache(config, batch=batch, frame_shape=(1, 2), head_dim=6)
    recorder = AttentionMassRecorder(query_block_size=block)
    with recorder.attached(cache):
        run_video(cache, chunks, recache=recache)
    records = recorder.records
    assert len(records) >= 2 * chunks
    expected_roles = SLOT_ROLES if config.policy == "memrope" else (SINK_ROLE, RECENT, CURRENT)
    assert recorder.roles == cache.role_names == expected_roles
    for record in records:
        for shares in [record["shares"], *record["item_shares"]]:
            assert list(shares) == list(cache.role_names)
            assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
            assert all(share >= 0.0 for share in shares.values())
        assert len(record["item_shares"]) == batch


@pytest.mark.parametrize(
    ("config", "block"),
    [
        (MEMROPE, 1),
        (MEMROPE, 5),
        (MEMROPE, 128),
        (SINK, 5),
        (FULL, 7),
    ],  # 5 and 7 split the 12 queries unevenly
    ids=["memrope-1", "memrope-5", "memrope-128", "sink-5", "full-7"],
)
def test_shares_match_the_brute_force_probability_matrix(config: MemRoPEConfig, block: int) -> None:
    cache = make_cache(config, layers=2, batch=2)
    references: list[torch.Tensor] = []

    def reference(hook_cache: MemRoPECache, layer: int, query: torch.Tensor, context: CacheContext) -> None:
        roles = roles_from_layout(hook_cache, layer)
        shares = reference_shares(query, context.keys, roles, hook_cache.frame_seqlen, hook_cache.role_names)
        references.append(shares)

    cache.register_attention_hook(reference)
    recorder = AttentionMassRecorder(query_block_size=block)
    recorder.attach(cache)
    run_video(cache, 6, recache=True)
    records = recorder.records
    assert len(records) == len(references) == 6 * 2 * 2 + 2
    for record, expected in zip(records, references):
        torch.testing.assert_close(item_share_rows(record, cache.role_names), expected, rtol=0, atol=1e-5)
        batch_mean = torch.tensor([record["shares"][role] for role in cache.role_names], dtype=torch.float64)
        torch.testing.assert_close(batch_mean, expected.mean(dim=0), rtol=0, atol=1e-5)


def steady_state_cache() -> MemRoPECache:
    cache = make_cache(MEMROPE)
    run_video(cache, 6, calls=1)
    assert cache.slot_layout()[:3] == ["f0", "long", "short"]
    return cache


def context_of(keys: torch.Tensor) -> CacheContext:
    return CacheContext(
        keys=keys, values=torch.zeros_like(keys), query_cos=torch.empty(0), query_sin=torch.empty(0)
    )


def test_uniform_attention_gives_each_role_its_fraction_of_the_slots() -> None:
    cache = steady_state_cache()
    recorder = AttentionMassRecorder()
    query = torch.randn(1, 2 * FRAME_SEQLEN, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(1))
    recorder(cache, 0, query, context_of(torch.zeros(1, 8 * FRAME_SEQLEN, HEADS, HEAD_DIM)))
    (record,) = recorder.records
    expected = {"sink": 1 / 8, "long": 1 / 8, "short": 1 / 8, "recent": 3 / 8, "current": 2 / 8}
    assert record["shares"] == pytest.approx(expected, abs=1e-6)


def test_keys_aligned_with_the_query_in_the_sink_take_nearly_all_the_mass() -> None:
    cache = steady_state_cache()
    direction = torch.ones(HEAD_DIM)
    query = direction.expand(1, 2 * FRAME_SEQLEN, HEADS, HEAD_DIM)
    keys = torch.zeros(1, 8 * FRAME_SEQLEN, HEADS, HEAD_DIM)
    keys[:, :FRAME_SEQLEN] = 10 * direction  # sink slot: logit 10 * D / sqrt(D) ~ 35 against 0
    recorder = AttentionMassRecorder(query_block_size=3)
    recorder(cache, 0, query, context_of(keys))
    shares = recorder.records[0]["shares"]
    assert shares["sink"] > 1 - 1e-9
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)


def test_call_indices_kinds_layer_and_call_filters() -> None:
    cache = make_cache(MEMROPE, layers=3)
    everything = AttentionMassRecorder()
    first_calls = AttentionMassRecorder(calls="first", layers=[2])
    some_calls = AttentionMassRecorder(calls=range(1, 3), layers={0, 1})
    for recorder in (everything, first_calls, some_calls):
        recorder.attach(cache)
    run_video(cache, 5, calls=3, recache=True)
    keys = [(r["chunk"], r["call"], r["layer"], r["kind"], r["start_frame"]) for r in everything.records]
    expected = [
        (chunk, call, layer, "advance" if call == 0 else "rewrite", 2 * chunk)
        for chunk in range(5)
        for call in range(3)
        for layer in range(3)
    ]
    expected += [(4, 3, layer, "recache", 5) for layer in range(3)]  # window: recent frames 5..7, chunk 8..9
    assert keys == expected
    assert {(r["chunk"], r["call"], r["layer"]) for r in first_calls.records} == {(c, 0, 2) for c in range(5)}
    assert {(r["call"], r["layer"]) for r in some_calls.records} == {(1, 0), (1, 1), (2, 0), (2, 1)}
    assert len(some_calls.records) == 5 * 2 * 2
    assert list(everything.per_chunk()) == list(range(5))
    assert everything.per_chunk()[0]["long"] == 0.0 and everything.per_chunk()[4]["long"] > 0.0


def test_one_recorder_on_several_caches_and_clear() -> None:
    first, second = make_cache(MEMROPE), make_cache(SINK, layers=2)
    recorder = AttentionMassRecorder()
    with recorder.attached(first), recorder.attached(second):
        run_video(first, 2, calls=1)
        run_video(second, 1, calls=1)
    first.reset()
    run_video(first, 3, calls=1)  # detached: not recorded
    assert [record["cache"] for record in recorder.records] == [0, 0, 1, 1]
    layouts = recorder.to_dict()["caches"]
    assert [layout["policy"] for layout in layouts] == ["memrope", "sink"]
    assert layouts[0] == {
        "policy": "memrope",
        "cache_frames": 8,
        "sink_frames": 1,
        "memory_frames": 2,
        "chunk_frames": 2,
        "frame_seqlen": 6,
        "frame_shape": [2, 3],
        "num_layers": 1,
        "num_heads": HEADS,
        "batch_size": 1,
    }
    recorder.clear()
    assert recorder.records == [] and recorder.to_dict()["caches"] == []


def test_recorder_rejects_bad_options_and_misuse() -> None:
    for options, error in [
        ({"layers": []}, ValueError),
        ({"layers": [-1]}, ValueError),
        ({"layers": "0"}, TypeError),
        ({"calls": "last"}, ValueError),
        ({"calls": [0, True]}, ValueError),
        ({"query_block_size": 0}, ValueError),
    ]:
        with pytest.raises(error, match=next(iter(options))):
            AttentionMassRecorder(**options)
    with pytest.raises(TypeError, match="cache must be a MemRoPECache"):
        AttentionMassRecorder().attach("cache")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layers must be indices in \[0, 1\)"):
        AttentionMassRecorder(layers=[1]).attach(make_cache(MEMROPE))
    query = torch.zeros(1, 12, HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match="no attention call"):
        AttentionMassRecorder()(make_cache(MEMROPE), 0, query, context_of(query))


def test_recorder_through_the_tiny_model() -> None:
    model = tiny_model()
    latent_hw = (4, 6)
    cache = model.new_cache(MEMROPE, 1, latent_hw)
    gen = torch.Generator().manual_seed(0)
    text = model.encode_context(torch.randn(1, 5, model.config.text_dim, generator=gen))
    recorder = AttentionMassRecorder()
    steps = (1000.0, 500.0, 0.0)  # two denoising steps, then the clean context refresh
    with torch.no_grad(), recorder.attached(cache):
        for chunk in range(5):
            latents = torch.randn(1, 2, model.config.in_dim, *latent_hw, generator=gen)
            for timestep in steps:
                model(latents, torch.full((1, 2), timestep), text, cache=cache, start_frame=2 * chunk)
        with cache.recaching() as (start, frames):
            window = torch.randn(1, frames, model.config.in_dim, *latent_hw, generator=gen)
            model(window, torch.zeros(1, frames), text, cache=cache, start_frame=start)
    records = recorder.records
    layers = model.config.num_layers
    assert len(records) == 5 * len(steps) * layers + layers
    assert [(r["chunk"], r["call"], r["layer"]) for r in records[: 2 * layers]] == [
        (0, 0, 0),
        (0, 0, 1),
        (0, 1, 0),
        (0, 1, 1),
    ]
    assert {r["kind"] for r in records[-layers:]} == {"recache"}
    per_chunk = recorder.per_chunk()
    assert list(per_chunk) == list(range(5))
    assert per_chunk[0]["current"] == pytest.approx(1.0)
    assert per_chunk[4]["long"] > 0 and per_chunk[4]["short"] > 0
    assert all(sum(shares.values()) == pytest.approx(1.0, abs=1e-5) for shares in per_chunk.values())


def record_chunks(
    recorder: AttentionMassRecorder, cache: MemRoPECache, chunks: range, calls: int = 2
) -> None:
    """``calls`` attention calls per layer for each chunk of ``chunks``, keeping no output."""
    gen = torch.Generator().manual_seed(chunks.start)
    with recorder.attached(cache):
        for chunk in chunks:
            for _ in range(calls):
                call_all_layers(cache, chunk * cache.config.chunk_frames, cache.config.chunk_frames, gen)


def test_recorder_memory_stays_bounded_over_many_chunks() -> None:
    cache = make_cache(MEMROPE, frame_shape=(1, 2), head_dim=4)
    bounded = AttentionMassRecorder(max_records=3)
    # warm up every code path first (one-time allocations elsewhere in the process are not growth)
    record_chunks(bounded, cache, range(10), calls=1)
    bounded.records  # noqa: B018 (flushes the pending chunk)
    gc.collect()
    tracemalloc.start()
    try:
        record_chunks(bounded, cache, range(10, 20), calls=1)
        bounded.records  # noqa: B018
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        record_chunks(bounded, cache, range(20, 90), calls=1)
        bounded.records  # noqa: B018
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 70 chunks x 48 bytes of sums plus the arrays' growth slack (~10 KB); every record kept: ~75 KB
    assert grown < 25_000, grown
    records = bounded.records
    assert len(records) == 3 and bounded.records_total == 90
    assert [record["chunk"] for record in records] == [87, 88, 89]
    (means,) = bounded.means()
    assert means["first_chunk"] == 0 and means["calls"] == [1] * 90


def test_bounded_recorder_keeps_the_statistics_of_every_call(tmp_path: Path) -> None:
    every, summed = AttentionMassRecorder(max_records=None), AttentionMassRecorder(max_records=0)
    for recorder in (every, summed):
        record_chunks(recorder, make_cache(MEMROPE, layers=2), range(7))
    assert len(every.records) == 7 * 2 * 2 and summed.records == [] and summed.records_total == 7 * 2 * 2
    expected = mean_shares_per_chunk(every.records)
    assert list(summed.per_chunk()) == list(range(7))
    for chunk, shares in summed.per_chunk().items():
        assert shares == pytest.approx(expected[chunk], abs=1e-12)
    loaded = load_attention_mass(summed.save(tmp_path / "sums.json"))
    assert loaded["records"] == [] and loaded["means"] == summed.means()
    with pytest.raises(ValueError, match="max_records must be an int >= 0 or None"):
        AttentionMassRecorder(max_records=-1)


# ---------------------------------------------------------------- files, plot, CLI
@pytest.fixture(scope="module")
def stats_data() -> dict[str, Any]:
    cache = make_cache(MEMROPE, layers=2)
    recorder = AttentionMassRecorder()
    with recorder.attached(cache):
        run_video(cache, 6)
    return recorder.to_dict()


def test_json_round_trip(tmp_path: Path) -> None:
    cache = make_cache(SINK, batch=2)
    recorder = AttentionMassRecorder(layers=[0], calls="first")
    with recorder.attached(cache):
        run_video(cache, 4)
    path = recorder.save(tmp_path / "stats.json")
    loaded = load_attention_mass(path)
    assert loaded == recorder.to_dict()
    assert loaded["format"] == ATTENTION_MASS_FORMAT and loaded["layers"] == [0] and loaded["calls"] == [0]
    from_records = mean_shares_per_chunk(loaded["records"])
    assert list(recorder.per_chunk()) == list(from_records)
    for chunk, shares in recorder.per_chunk().items():
        assert shares == pytest.approx(from_records[chunk], abs=1e-12)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a memrope attention-mass JSON file"),
        ("[1, 2]", "not memrope attention-mass statistics"),
        ('{"format": "memrope.generate_report"}', "format must be 'memrope.attention_mass'"),
        ('{"format": "memrope.attention_mass", "version": 99, "records": []}', "version 99"),
        ('{"format": "memrope.attention_mass", "version": 1, "records": {}}', "'records' must be a list"),
        ('{"format": "memrope.attention_mass", "version": 1, "records": [{"chunk": 0}]}', "record 0: lacks"),
        ('{"format": "memrope.attention_mass", "version": 2, "records": []}', "'means' must be a list"),
        (
            (
                '{"format": "memrope.attention_mass", "version": 2, "records": [], "means": [{"cache": 0, "layer": 0,'
                ' "first_chunk": 0, "calls": [1], "shares": {"sink": [1]}}]}'
            ),
            "means entry 0: 'shares' must map every role",
        ),
        (
            '{"format": "memrope.attention_mass", "version": 3, "records": [], "means": []}',
            "'roles' must be a list",
        ),
        (
            (
                '{"format": "memrope.attention_mass", "version": 3, "roles": ["sink", "sink"], "records": [],'
                ' "means": []}'
            ),
            r"'roles' must be a list of distinct role names \(version 3\)",
        ),
        (
            (
                '{"format": "memrope.attention_mass", "version": 3, "roles": ["sink", "current"],'
                ' "means": [],'
                ' "records": [{"chunk": 0, "call": 0, "layer": 0, "start_frame": 0, "kind": "advance",'
                ' "shares": {"history": 1.0}}]}'
            ),
            r"record 0: 'shares' must map roles from \('sink', 'current'\)",
        ),
        (
            (
                '{"format": "memrope.attention_mass", "version": 2, "means": [],'
                ' "records": [{"chunk": 0, "call": 0, "layer": 0, "start_frame": 0, "kind": "advance",'
                ' "shares": {"history": 1.0}}]}'
            ),
            r"record 0: 'shares' must map roles from \('sink', 'long', 'short', 'recent', 'current'\)",
        ),
    ],
)
def test_load_rejects_files_that_are_not_attention_mass_statistics(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_attention_mass(path)


def test_load_rejects_bad_shares_and_missing_files(tmp_path: Path, stats_data: dict[str, Any]) -> None:
    data = json.loads(json.dumps(stats_data))
    data["records"][3]["shares"]["sink"] = "much"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="record 3: share of 'sink' must be a finite number"):
        load_attention_mass(path)
    with pytest.raises(FileNotFoundError):
        load_attention_mass(tmp_path / "missing.json")


@needs_matplotlib
def test_plot_writes_a_png_from_data_or_file(tmp_path: Path, stats_data: dict[str, Any]) -> None:
    written = plot_attention_mass(stats_data, tmp_path / "mass.png", title="tiny run")
    assert written == tmp_path / "mass.png"
    assert written.read_bytes().startswith(PNG_MAGIC) and written.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no records"):
        plot_attention_mass({**stats_data, "records": [], "means": []}, tmp_path / "empty.png")


@needs_matplotlib
def test_plot_reads_version_1_files_from_their_records(tmp_path: Path, stats_data: dict[str, Any]) -> None:
    version_1 = {
        name: value
        for name, value in stats_data.items()
        if name not in ("means", "records_total", "max_records")
    }
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({**version_1, "version": 1}))
    assert plot_attention_mass(path, tmp_path / "v1.png").read_bytes().startswith(PNG_MAGIC)


def hide_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_plot_without_matplotlib_says_how_to_install_it(
    tmp_path: Path,
    stats_data: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hide_matplotlib(monkeypatch)
    with pytest.raises(ImportError, match=r'pip install "memrope\[plot\]"'):
        plot_attention_mass(stats_data, tmp_path / "mass.png")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(stats_data))
    assert main(["plot-attention", str(stats)]) == 1
    assert (
        'memrope: error: plotting attention mass needs matplotlib: pip install "memrope[plot]"'
        in capsys.readouterr().err
    )
    assert not (tmp_path / "stats.png").exists()


@needs_matplotlib
def test_cli_plot_attention(
    tmp_path: Path, stats_data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(stats_data))
    assert main(["plot-attention", str(stats), "--title", "tiny"]) == 0
    assert (tmp_path / "stats.png").read_bytes().startswith(PNG_MAGIC)
    assert capsys.readouterr().out.strip() == str(tmp_path / "stats.png")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.json"], "missing.json does not exist"),
        (["bad.json"], "format must be 'memrope.attention_mass'"),
        (["stats.json", "-o", "nowhere/out.png"], "the folder"),
        (["stats.json", "-o", "."], "is a directory"),
    ],
)
def test_cli_plot_attention_errors(
    tmp_path: Path,
    stats_data: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    (tmp_path / "stats.json").write_text(json.dumps(stats_data))
    assert main(["plot-attention", *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memrope: error: ") and message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    ("arguments", "exit_code", "message"),
    [
        (["missing.json"], EXIT_USAGE, "missing.json does not exist"),
        (["bad.json"], EXIT_USAGE, "format must be 'memrope.attention_mass'"),
        (["stats.json", "-o", "."], EXIT_USAGE, "is a directory"),
        (["stats.json"], EXIT_FAILURE, 'needs matplotlib: pip install "memrope[plot]"'),
    ],
)
def test_plot_attention_command_raises_the_cli_error_of_memrope_errors(
    tmp_path: Path,
    stats_data: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    exit_code: int,
    message: str,
) -> None:
    """The command code reports through :class:`memrope.errors.CLIError`, without importing the CLI."""
    monkeypatch.chdir(tmp_path)
    hide_matplotlib(monkeypatch)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    (tmp_path / "stats.json").write_text(json.dumps(stats_data))
    parser = argparse.ArgumentParser()
    configure_plot_attention(parser)
    with pytest.raises(CLIError, match=re.escape(message)) as raised:
        run_plot_attention(parser.parse_args(arguments))
    assert raised.value.exit_code == exit_code
    assert not list(tmp_path.glob("*.png"))


def test_cli_error_defaults_to_the_usage_exit_code() -> None:
    assert (EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)
    error = CLIError("--output x is a directory")
    assert str(error) == "--output x is a directory" and error.exit_code == EXIT_USAGE
    assert CLIError("disk full", EXIT_FAILURE).exit_code == EXIT_FAILURE
    assert isinstance(error, Exception) and not isinstance(error, ValueError)


PUBLIC_NAMES = (  # every public name of the single-module memrope.diagnostics, before it became a package
    "ATTENTION_MASS_FORMAT",
    "ATTENTION_MASS_VERSION",
    "AttentionMassRecorder",
    "CALL_SELECTIONS",
    "CallSelection",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_QUERY_BLOCK_SIZE",
    "EXTRA_ROLE_COLORS",
    "FIGURE_DPI",
    "FIGURE_SIZE",
    "PLOT_ATTENTION_DESCRIPTION",
    "PLOT_ATTENTION_HELP",
    "PLOT_INSTALL_HINT",
    "READABLE_VERSIONS",
    "REQUIRED_RECORD_FIELDS",
    "ROLE_COLORS",
    "check_attention_mass",
    "configure_plot_attention",
    "load_attention_mass",
    "mean_shares_per_chunk",
    "merge_roles",
    "plot_attention_mass",
    "role_attention_shares",
    "run_plot_attention",
    "slot_attention_mass",
    "statistics_roles",
)


def test_every_public_name_is_still_importable_from_memrope_diagnostics() -> None:
    from memrope import diagnostics

    assert [name for name in PUBLIC_NAMES if not hasattr(diagnostics, name)] == []
    assert sorted(diagnostics.__all__) == sorted(
        [
            "ATTENTION_MASS_FORMAT",
            "ATTENTION_MASS_VERSION",
            "AttentionMassRecorder",
            "check_attention_mass",
            "load_attention_mass",
            "mean_shares_per_chunk",
            "merge_roles",
            "plot_attention_mass",
            "role_attention_shares",
            "slot_attention_mass",
            "statistics_roles",
        ]
    )
    namespace: dict[str, object] = {}
    exec("from memrope.diagnostics import *", namespace)  # noqa: S102 - the star import under test
    assert set(diagnostics.__all__) <= set(namespace)
    assert diagnostics.ATTENTION_MASS_FORMAT == "memrope.attention_mass"
    assert diagnostics.ATTENTION_MASS_VERSION == 3
    assert (diagnostics.DEFAULT_QUERY_BLOCK_SIZE, diagnostics.DEFAULT_MAX_RECORDS) == (128, 10_000)


def test_memrope_files_hold_what_version_2_held(stats_data: dict[str, Any]) -> None:
    """Version 3 only lets the role list follow the policy: a memrope recording is a version-2 file but for
    the version number, and still reads as one."""
    assert stats_data["version"] == ATTENTION_MASS_VERSION == 3 and stats_data["roles"] == list(SLOT_ROLES)
    assert all(list(record["shares"]) == list(SLOT_ROLES) for record in stats_data["records"])
    assert all(list(entry["shares"]) == list(SLOT_ROLES) for entry in stats_data["means"])
    as_version_2 = check_attention_mass({**stats_data, "version": 2, "roles": ["ignored"]})
    assert statistics_roles(as_version_2) == SLOT_ROLES == statistics_roles(stats_data)


def test_sink_and_full_recordings_name_only_their_cache_s_roles() -> None:
    for config in (SINK, FULL):
        cache = make_cache(config)
        recorder = AttentionMassRecorder()
        with recorder.attached(cache):
            run_video(cache, 5)
        data = recorder.to_dict()
        assert data["roles"] == [SINK_ROLE, RECENT, CURRENT] == list(cache.role_names)
        assert all(set(entry["shares"]) == {SINK_ROLE, RECENT, CURRENT} for entry in data["means"])
        assert set(recorder.per_chunk()[4]) == {SINK_ROLE, RECENT, CURRENT}
    assert AttentionMassRecorder().to_dict()["roles"] == []


def test_role_shares_in_any_role_order_and_bad_role_lists() -> None:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, FRAME_SEQLEN, HEADS, HEAD_DIM, generator=generator)
    keys = torch.randn(1, 3 * FRAME_SEQLEN, HEADS, HEAD_DIM, generator=generator)
    slot_roles = ["sink", "history", "current"]
    default_order = role_attention_shares(query, keys, ["sink", "recent", "current"], FRAME_SEQLEN)
    custom = role_attention_shares(
        query, keys, slot_roles, FRAME_SEQLEN, roles=("current", "history", "sink")
    )
    in_order = role_attention_shares(
        query, keys, slot_roles, FRAME_SEQLEN, roles=("sink", "history", "current")
    )
    torch.testing.assert_close(custom.flip(1), in_order)
    torch.testing.assert_close(custom[:, [2, 0]], default_order[:, [0, 4]])  # sink and current do not move
    with pytest.raises(ValueError, match=r"slot_roles must hold roles from \('sink', 'long'"):
        role_attention_shares(query, keys, slot_roles, FRAME_SEQLEN)
    with pytest.raises(ValueError, match="roles must be distinct non-empty role names"):
        role_attention_shares(query, keys, slot_roles, FRAME_SEQLEN, roles=("sink", "sink"))
    with pytest.raises(TypeError, match="roles must be a sequence of role names"):
        role_attention_shares(query, keys, slot_roles, FRAME_SEQLEN, roles="sink")  # type: ignore[arg-type]


def test_merge_roles_keeps_the_display_order() -> None:
    assert merge_roles(SLOT_ROLES) == SLOT_ROLES
    running_mean_roles = ("sink", "history", "recent", "current")
    assert merge_roles(("sink", "recent", "current"), SLOT_ROLES, running_mean_roles) == (
        "sink",
        "long",
        "short",
        "history",
        "recent",
        "current",
    )
    assert merge_roles() == () and merge_roles(["current", "history"]) == ("history", "current")
