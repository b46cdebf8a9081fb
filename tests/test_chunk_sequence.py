"""A first chunk of another size (``MemRoPEConfig.first_chunk_frames``, Self-Forcing's independent first frame).

The sequence is ``first_chunk_frames``, then ``chunk_frames`` per chunk: the configuration, the cache
(call shapes, eviction, slot roles, saved counters) and the pipeline (chunk boundaries, prompt
switches, checkpoints) follow it. Parity with the literal official cache is in
``tests/test_official_reference.py``; the attached upstream pipelines in ``tests/test_upstream_pipelines.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memrope import MemRoPECache, MemRoPEConfig
from memrope.attention import rope_on_the_fly
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline

FRAME_SHAPE = (2, 3)
TOKENS = FRAME_SHAPE[0] * FRAME_SHAPE[1]
FIRST_FRAME = MemRoPEConfig(first_chunk_frames=1)  # 1 frame, then chunks of 3, in 12 frames


def _cache(config: MemRoPEConfig, layers: int = 1) -> MemRoPECache:
    return MemRoPECache(
        config, num_layers=layers, batch_size=1, num_heads=2, head_dim=8, frame_shape=FRAME_SHAPE
    )


def _play(
    cache: MemRoPECache, start: int, calls: int = 2, salt: int = 0, advance: bool = True
) -> torch.Tensor:
    """``calls`` calls (an advance unless ``advance=False``, then rewrites) of the chunk at ``start`` on every
    layer; the last output."""
    frames = cache.chunk_frames_at(start)
    generator = torch.Generator().manual_seed(1000 * start + salt)
    output = torch.empty(0)
    for call in range(calls):
        for layer in range(cache.num_layers):
            q, k, v = (torch.randn(1, frames * TOKENS, 2, 8, generator=generator) for _ in range(3))
            output = rope_on_the_fly(q, k, v, cache=cache, layer=layer, start_frame=start)
            assert cache.last_call_kind(layer) == ("advance" if call == 0 and advance else "rewrite")
    return output


# ------------------------------------------------------------------------------ configuration
def test_first_chunk_frames_is_validated_and_saved() -> None:
    assert FIRST_FRAME.first_chunk == 1 and MemRoPEConfig().first_chunk == 3
    assert (
        MemRoPEConfig(first_chunk_frames=3).first_chunk_frames is None
    )  # the same sequence as no first chunk
    assert MemRoPEConfig.from_dict(FIRST_FRAME.to_dict()) == FIRST_FRAME
    official = {"mode": "ema", "local_attn_size": 12, "sink_size": 3}
    assert MemRoPEConfig.from_official(official, 3, first_chunk_frames=1) == FIRST_FRAME
    with pytest.raises(TypeError, match=r"first_chunk_frames must be an int >= 1, got str '1'"):
        MemRoPEConfig(first_chunk_frames="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first_chunk_frames must be an int >= 1, got 0"):
        MemRoPEConfig(first_chunk_frames=0)
    with pytest.raises(ValueError, match=r"first_chunk_frames must be <= cache_frames=12 .* got 13"):
        MemRoPEConfig(first_chunk_frames=13)


@settings(max_examples=50, deadline=None)
@given(first=st.integers(1, 6), chunk=st.integers(1, 5), index=st.integers(0, 40))
def test_chunk_boundaries_follow_the_sequence(first: int, chunk: int, index: int) -> None:
    config = MemRoPEConfig(policy="full", chunk_frames=chunk, first_chunk_frames=first)
    start = config.chunk_start(index)
    assert config.chunk_index(start) == index
    assert config.chunk_start(index + 1) == start + config.chunk_frames_at(start)
    assert config.chunk_frames_at(start) == (first if index == 0 else chunk)
    assert all(config.chunk_index(frame) is None for frame in range(start + 1, config.chunk_start(index + 1)))


# ------------------------------------------------------------------------------ cache
@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(["memrope", "sink"]),
    first=st.integers(1, 4),
    chunk=st.integers(1, 3),
    sink=st.integers(0, 3),
    spare=st.integers(0, 4),
    chunks=st.integers(1, 9),
)
def test_the_cache_keeps_the_sink_and_the_newest_frames(
    policy: str, first: int, chunk: int, sink: int, spare: int, chunks: int
) -> None:
    memory = 2 if policy == "memrope" else 0
    size = max(sink + memory + chunk, first) + spare
    config = MemRoPEConfig(
        policy=policy, cache_frames=size, sink_frames=sink, chunk_frames=chunk, first_chunk_frames=first
    )
    cache = _cache(config)
    for index in range(chunks):
        start = config.chunk_start(index)
        _play(cache, start)
        end = start + config.chunk_frames_at(start)
        state = cache.layers[0]
        assert state.end_frame == end and state.chunk_start == start
        real = [frame for frame in state.slot_frames if frame >= 0]
        if end <= size:  # still filling: every frame so far
            assert state.slot_frames == list(range(end))
        else:
            kept = size - sink - (memory if state.memory else 0)
            assert real == list(range(sink)) + list(range(end - kept, end))
        roles = cache.slot_roles(0)
        assert roles[-(end - start) :] == ["current"] * (end - start)
        assert roles.count("current") == end - start


def test_a_protected_rewrite_of_the_chunk_at_frame_1_leaves_its_sink_slots() -> None:
    """Chunk 1 (frames 1-3) sits in slots 1-3; slots 1 and 2 are sink slots: its rewrites skip them (§3)."""
    cache = _cache(FIRST_FRAME)
    _play(cache, 0)
    _play(cache, 1, calls=1, salt=1)
    after_first_call = cache.layer_contents(0)[0].clone()
    _play(cache, 1, calls=1, salt=2, advance=False)
    keys = cache.layer_contents(0)[0]
    assert torch.equal(keys[:, : 3 * TOKENS], after_first_call[:, : 3 * TOKENS])
    assert not torch.equal(keys[:, 3 * TOKENS :], after_first_call[:, 3 * TOKENS :])


def test_calls_of_the_wrong_size_name_the_chunk_they_belong_to() -> None:
    cache = _cache(FIRST_FRAME)
    three = torch.zeros(1, 3 * TOKENS, 2, 8)
    with pytest.raises(ValueError, match=r"L = first_chunk_frames 1 x 6 tokens"):
        cache.update(three, three, layer=0, start_frame=0)
    _play(cache, 0)
    one = torch.zeros(1, TOKENS, 2, 8)
    with pytest.raises(ValueError, match=r"L = chunk_frames 3 x 6 tokens"):
        cache.update(one, one, layer=0, start_frame=1)
    with pytest.raises(
        ValueError, match=r"must be 1 \(next chunk\) or 0 \(rewrite the current chunk\), got 3"
    ):
        cache.update(three, three, layer=0, start_frame=3)


@pytest.mark.parametrize("chunks", [1, 2, 6])
def test_state_dict_round_trip_follows_the_sequence(chunks: int) -> None:
    original = _cache(FIRST_FRAME, layers=2)
    for index in range(chunks):
        _play(original, FIRST_FRAME.chunk_start(index))
    resumed = _cache(FIRST_FRAME, layers=2)
    resumed.load_state_dict(original.state_dict())
    for index in range(chunks, chunks + 3):
        start = FIRST_FRAME.chunk_start(index)
        assert torch.equal(_play(original, start), _play(resumed, start))
    other = _cache(MemRoPEConfig())
    with pytest.raises(ValueError, match=r"first_chunk_frames=1 \(this cache: None\)"):
        other.load_state_dict(original.state_dict())


# ------------------------------------------------------------------------------ pipeline
TINY = WanConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8, text_len=6, freq_dim=16
)
LATENT_HW = (4, 6)
PIPELINE_CACHE = MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2, first_chunk_frames=1)


@pytest.fixture(scope="module")
def model() -> CausalWanModel:
    torch.manual_seed(0)
    return CausalWanModel(TINY).eval()


def _prompt(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, TINY.text_dim, generator=torch.Generator().manual_seed(seed))


def test_the_pipeline_generates_the_chunk_sequence(model: CausalWanModel) -> None:
    chunks = list(
        CausalInferencePipeline(model, PIPELINE_CACHE).stream(
            _prompt(), num_frames=9, seed=3, latent_hw=LATENT_HW
        )
    )
    assert [(c.index, c.start_frame, c.latents.shape[1]) for c in chunks] == [
        (0, 0, 1),
        (1, 1, 2),
        (2, 3, 2),
        (3, 5, 2),
        (4, 7, 2),
    ]
    with pytest.raises(
        ValueError,
        match=r"num_frames must be first_chunk_frames=1 \+ a multiple of chunk_frames=2 \(1, 3, 5, \.\.\.\), got 8",
    ):
        CausalInferencePipeline(model, PIPELINE_CACHE).generate(_prompt(), num_frames=8, latent_hw=LATENT_HW)
    with pytest.raises(ValueError, match=r"frame must be a chunk boundary \(1, 3, 5, \.\.\.\)"):
        CausalInferencePipeline(model, PIPELINE_CACHE).generate(
            _prompt(), num_frames=9, latent_hw=LATENT_HW, prompt_switches=[(4, _prompt(2))]
        )


def test_checkpoints_and_prompt_switches_follow_the_sequence(model: CausalWanModel, tmp_path: Path) -> None:
    """A run interrupted after chunk 4 resumes at frame 7 and still makes the switch at frame 9."""
    path = tmp_path / "run.safetensors"
    options = {"num_frames": 13, "seed": 5, "latent_hw": LATENT_HW, "prompt_switches": [(9, _prompt(2))]}
    full = list(CausalInferencePipeline(model, PIPELINE_CACHE).stream(_prompt(), **options))  # type: ignore[arg-type]
    interrupted = CausalInferencePipeline(model, PIPELINE_CACHE).stream(
        _prompt(),
        save_every=2,
        checkpoint_path=path,
        **options,  # type: ignore[arg-type]
    )
    for chunk in interrupted:
        if chunk.index == 4:  # the checkpoint after chunk 3 is on disk; chunk 4 is lost with the "crash"
            break
    resumed = list(CausalInferencePipeline(model, PIPELINE_CACHE).stream(resume_from=path))
    assert [(c.index, c.start_frame) for c in resumed] == [(4, 7), (5, 9), (6, 11)]
    for got, expected in zip(resumed, full[4:]):
        assert torch.equal(got.latents, expected.latents)
    unswitched = CausalInferencePipeline(model, PIPELINE_CACHE).generate(
        _prompt(), num_frames=13, seed=5, latent_hw=LATENT_HW
    )
    video = torch.cat([c.latents for c in full], dim=1)
    assert torch.equal(video[:, :9], unswitched[:, :9]) and not torch.equal(video[:, 9:], unswitched[:, 9:])
    other = dataclasses.replace(PIPELINE_CACHE, first_chunk_frames=None)
    with pytest.raises(ValueError, match="first_chunk_frames"):
        list(CausalInferencePipeline(model, other).stream(resume_from=path))
