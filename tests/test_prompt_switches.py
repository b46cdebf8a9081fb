"""Prompt switches (LongLive-style interactive generation) in CausalInferencePipeline: the output
changes from the switch frame on only, the window after the sink is re-encoded under the new prompt
while the sink keeps the past, the cache and the kept latents stay bounded, and runs resume exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memrope.config import MemRoPEConfig
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline, ChunkResult

TINY = WanConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8, text_len=6, freq_dim=16
)
LATENT_HW = (4, 6)
CACHE = MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2)  # 1 sink + 2 memory + 3 recent + 2


@pytest.fixture(scope="module")
def model() -> CausalWanModel:
    torch.manual_seed(0)
    return CausalWanModel(TINY).eval()


def _prompt(seed: int, batch: int = 1, length: int = 3) -> torch.Tensor:
    return torch.randn(batch, length, TINY.text_dim, generator=torch.Generator().manual_seed(seed))


def _run(
    model: CausalWanModel,
    switches: list[tuple[int, torch.Tensor]] | None,
    *,
    config: MemRoPEConfig = CACHE,
    num_frames: int = 16,
    batch: int = 1,
    **kwargs: object,
) -> tuple[CausalInferencePipeline, list[ChunkResult]]:
    pipe = CausalInferencePipeline(model, config)
    chunks = list(
        pipe.stream(
            _prompt(1, batch),
            num_frames=num_frames,
            seed=5,
            latent_hw=LATENT_HW,
            prompt_switches=switches,
            **kwargs,  # type: ignore[arg-type]
        )
    )
    return pipe, chunks


@pytest.mark.parametrize(
    "config",
    [
        CACHE,
        MemRoPEConfig(policy="sink", cache_frames=8, sink_frames=1, chunk_frames=2),
        MemRoPEConfig(policy="full", sink_frames=1, chunk_frames=2),
        MemRoPEConfig(
            cache_frames=9, sink_frames=2, chunk_frames=1, pooling="per_position", adaptive_short_rate=True
        ),
    ],
    ids=["memrope", "sink", "full", "adaptive-chunk1"],
)
@pytest.mark.parametrize("switch_frame", [4, 10])  # while filling; after the first eviction
def test_a_switch_changes_the_video_from_its_frame_on_only(
    model: CausalWanModel, config: MemRoPEConfig, switch_frame: int
) -> None:
    _, plain = _run(model, None, config=config)
    _, switched = _run(model, [(switch_frame, _prompt(2))], config=config)
    assert [c.start_frame for c in switched] == [c.start_frame for c in plain]
    for before, after in zip(plain, switched):
        if before.start_frame < switch_frame:
            assert torch.equal(before.latents, after.latents), before.start_frame
        else:
            assert (before.latents - after.latents).abs().max() > 1e-3, before.start_frame


def test_the_new_prompt_drives_the_video_after_the_switch(model: CausalWanModel) -> None:
    """Switching to prompt b gives the frames that prompt b gives in a fresh context more than prompt a's."""
    _, only_a = _run(model, None)
    _, a_then_b = _run(model, [(8, _prompt(2))])
    pipe_b = CausalInferencePipeline(model, CACHE)
    only_b = list(pipe_b.stream(_prompt(2), num_frames=16, seed=5, latent_hw=LATENT_HW))
    last = -1
    distance_to_b = (a_then_b[last].latents - only_b[last].latents).norm()
    distance_to_a = (a_then_b[last].latents - only_a[last].latents).norm()
    assert distance_to_b < distance_to_a


def test_the_sink_keeps_the_past_and_the_cache_stays_bounded(model: CausalWanModel) -> None:
    plain_pipe, _ = _run(model, None, num_frames=20)
    switches = [(frame, _prompt(10 + frame)) for frame in (4, 8, 10, 14, 18)]
    pipe = CausalInferencePipeline(model, CACHE)
    stream = pipe.stream(_prompt(1), num_frames=20, seed=5, latent_hw=LATENT_HW, prompt_switches=switches)
    cache = None
    sizes, kept = [], []
    for _chunk in stream:
        cache = pipe._run.cache  # type: ignore[union-attr]
        sizes.append(cache.resident_bytes())
        history = pipe._run.history  # type: ignore[union-attr]
        kept.append(None if history is None else history.shape[1])
    assert cache is not None
    assert sizes[4:] == [sizes[-1]] * 6 and max(sizes) == sizes[-1]  # constant from the first eviction on
    assert kept == [
        2,
        4,
        6,
        7,
        7,
        7,
        7,
        7,
        7,
        None,
    ]  # at most cache_frames - sink_frames, none after the last
    plain_cache = plain_pipe._run.cache  # type: ignore[union-attr]
    sink_tokens = CACHE.sink_frames * cache.frame_seqlen
    for layer in range(TINY.num_layers):
        keys, values = cache.layer_contents(layer)
        plain_keys, plain_values = plain_cache.layer_contents(layer)
        assert torch.equal(keys[:, :sink_tokens], plain_keys[:, :sink_tokens])
        assert torch.equal(values[:, :sink_tokens], plain_values[:, :sink_tokens])
        assert not torch.equal(keys[:, sink_tokens:], plain_keys[:, sink_tokens:])
    assert cache.slot_layout() == plain_cache.slot_layout()


def test_the_switch_re_encodes_the_window_after_the_sink(model: CausalWanModel) -> None:
    """Right after the switch the sink and memory slots are untouched, the recent and chunk slots re-encoded."""
    pipe = CausalInferencePipeline(model, CACHE)
    stream = pipe.stream(_prompt(1), num_frames=12, seed=5, latent_hw=LATENT_HW)
    for _ in range(5):  # frames 0..9: past the first eviction
        next(stream)
    run = pipe._run
    assert run is not None
    cache = run.cache
    assert cache.slot_layout() == ["f0", "long", "short", "f5", "f6", "f7", "f8", "f9"]
    before = [tuple(t.clone() for t in cache.layer_contents(layer)) for layer in range(TINY.num_layers)]
    run.history = torch.randn(1, 7, TINY.in_dim, *LATENT_HW)  # frames 3..9
    pipe._switch_prompt(run, _prompt(2))
    tokens = cache.frame_seqlen
    for layer, (old_keys, old_values) in enumerate(before):
        keys, values = cache.layer_contents(layer)
        assert torch.equal(keys[:, : 3 * tokens], old_keys[:, : 3 * tokens])  # sink, long, short
        assert torch.equal(values[:, : 3 * tokens], old_values[:, : 3 * tokens])
        for slot in range(3, 8):
            span = slice(slot * tokens, (slot + 1) * tokens)
            assert not torch.equal(keys[:, span], old_keys[:, span]), slot
    assert cache.slot_layout() == ["f0", "long", "short", "f5", "f6", "f7", "f8", "f9"]
    assert cache.recache_window() == (5, 5)


def test_batch_items_switch_independently(model: CausalWanModel) -> None:
    # one step: no intermediate noise, so each item depends on its own prompts and noise only
    pipe = CausalInferencePipeline(model, CACHE, denoising_steps=(1000,))
    first, second = torch.cat([_prompt(1), _prompt(4)]), torch.cat([_prompt(2), _prompt(3)])
    noise = torch.randn(2, 12, TINY.in_dim, *LATENT_HW, generator=torch.Generator().manual_seed(5))
    both = pipe.generate(first, num_frames=12, noise=noise, seed=0, prompt_switches=[(6, second)])
    for item in range(2):
        alone = pipe.generate(
            first[item : item + 1],
            num_frames=12,
            noise=noise[item : item + 1],
            seed=0,
            prompt_switches=[(6, second[item : item + 1])],
        )
        torch.testing.assert_close(both[item : item + 1], alone, rtol=0, atol=1e-5)


def test_resume_across_switches_is_bit_identical(model: CausalWanModel, tmp_path: Path) -> None:
    path = tmp_path / "run.safetensors"
    switches = [(6, _prompt(2)), (12, _prompt(3, length=5))]
    _, full = _run(model, switches, num_frames=18, save_every=1, checkpoint_path=path)
    # the checkpoint of chunk i is written before it is yielded: resume at chunk 3 (frame 6, a
    # switch), chunk 4 (between the switches) and chunk 6 (frame 12, the second switch)
    for stop_after in (2, 3, 5):
        pipe = CausalInferencePipeline(model, CACHE)
        stream = pipe.stream(
            _prompt(1),
            num_frames=18,
            seed=5,
            latent_hw=LATENT_HW,
            prompt_switches=switches,
            save_every=1,
            checkpoint_path=path,
        )
        for chunk in stream:
            if chunk.index == stop_after:
                break
        state = pipe.load_state(path)
        assert [frame for frame, _ in state["switches"]] == [6, 12]
        resumed = list(CausalInferencePipeline(model, CACHE).stream(resume_from=path))
        assert [c.index for c in resumed] == list(range(stop_after + 1, 9))
        for got, expected in zip(resumed, full[stop_after + 1 :]):
            assert torch.equal(got.latents, expected.latents), got.index
    with pytest.raises(ValueError, match="prompt_switches"):
        CausalInferencePipeline(model, CACHE).stream(resume_from=path, prompt_switches=switches)


def test_in_memory_state_round_trip_with_switches(model: CausalWanModel) -> None:
    switches = [(4, _prompt(2))]
    pipe = CausalInferencePipeline(model, CACHE)
    stream = pipe.stream(_prompt(1), num_frames=10, seed=5, latent_hw=LATENT_HW, prompt_switches=switches)
    next(stream)
    state = pipe.state_dict()
    assert state["history"] is not None and state["history"].shape[1] == 2
    rest = list(stream)
    resumed = list(CausalInferencePipeline(model, CACHE).stream(resume_from=state))
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(rest, resumed))


@pytest.mark.parametrize(
    "switches, error, match",
    [
        (
            [(3, _prompt(2))],
            ValueError,
            r"prompt_switches\[0\] frame must be a multiple of chunk_frames=2 in \(0, 10\)",
        ),
        (
            [(0, _prompt(2))],
            ValueError,
            r"prompt_switches\[0\] frame must be a multiple of chunk_frames=2 in \(0, 10\)",
        ),
        ([(10, _prompt(2))], ValueError, r"in \(0, 10\)"),
        (
            [(6, _prompt(2)), (4, _prompt(3))],
            ValueError,
            r"prompt_switches\[1\] frame must be .* in \(6, 10\)",
        ),
        (
            [(4, _prompt(2, batch=2))],
            ValueError,
            r"prompt_switches\[0\] text_embeds must have the batch size",
        ),
        ([(4, torch.zeros(1, 3, 5))], ValueError, r"prompt_switches\[0\] text_embeds must have shape"),
        ([(4, "a cat")], TypeError, r"prompt_switches\[0\] text_embeds must be a tensor"),
        ([(True, _prompt(2))], ValueError, r"got True"),
        ([4], TypeError, r"prompt_switches\[0\] must be a \(frame, text_embeds\) pair"),
        ({4: _prompt(2)}, TypeError, "prompt_switches must be a sequence of"),
    ],
)
def test_bad_switches_raise_before_anything_runs(
    model: CausalWanModel, switches: object, error: type[Exception], match: str
) -> None:
    pipe = CausalInferencePipeline(model, CACHE)
    with pytest.raises(error, match=match):
        pipe.stream(_prompt(1), num_frames=10, seed=5, latent_hw=LATENT_HW, prompt_switches=switches)  # type: ignore[arg-type]
