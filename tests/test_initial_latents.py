"""CausalInferencePipeline(initial_latents=...): a video that starts from given clean latents
(image-to-video, video continuation), in Self-Forcing's order, checkpointed and validated."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from small_pipeline import CACHE, LATENT_HW, STEPS, TINY, small_model

from memrope.config import MemRoPEConfig
from memrope.errors import NonFiniteError
from memrope.flow_matching import FlowMatchScheduler
from memrope.models.wan import CausalWanModel
from memrope.pipeline import CausalInferencePipeline


@pytest.fixture(scope="module")
def model() -> CausalWanModel:
    return small_model()


def _prompt(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, TINY.text_dim, generator=torch.Generator().manual_seed(1))


def _given(batch: int, frames: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, frames, TINY.in_dim, *LATENT_HW, generator=torch.Generator().manual_seed(seed))


def _reference(
    model: CausalWanModel,
    config: MemRoPEConfig,
    text: torch.Tensor,
    given: torch.Tensor,
    num_frames: int,
    seed: int,
) -> torch.Tensor:
    """Self-Forcing's loop written out: the given chunks at timestep 0, then the noise of the generated
    frames only (drawn first), each chunk denoised with fresh noise per step and written back clean."""
    batch, given_frames = given.shape[:2]
    scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0)
    timesteps = scheduler.warp(STEPS)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, num_frames - given_frames, TINY.in_dim, *LATENT_HW, generator=generator)
    cache = model.new_cache(config, batch, LATENT_HW)
    context = model.encode_context(text)
    video = [given]
    with torch.no_grad():
        start = 0
        while start < given_frames:
            frames = config.chunk_frames_at(start)
            part = given[:, start : start + frames]
            model(part, torch.zeros(batch, frames), context, cache=cache, start_frame=start)
            start += frames
        while start < num_frames:
            frames = config.chunk_frames_at(start)
            x = noise[:, start - given_frames : start - given_frames + frames]
            for step, t_value in enumerate(timesteps):
                t = t_value.expand(batch, frames).clone()
                x0 = scheduler.to_x0(model(x, t, context, cache=cache, start_frame=start), x, t)
                if step + 1 < len(timesteps):
                    fresh = torch.randn((batch * frames, *x.shape[2:]), generator=generator)
                    x = scheduler.add_noise(x0, fresh.unflatten(0, (batch, frames)), timesteps[step + 1])
            model(x0, torch.zeros(batch, frames), context, cache=cache, start_frame=start)
            video.append(x0)
            start += frames
    return torch.cat(video, dim=1)


@pytest.mark.parametrize(
    ("config", "given_frames", "num_frames"),
    [
        (CACHE, 2, 8),
        (CACHE, 6, 12),  # the given frames fill the cache past its first eviction
        (MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2, first_chunk_frames=1), 1, 7),
        (MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2, first_chunk_frames=1), 3, 7),
    ],
)
def test_the_video_continues_the_given_latents_in_self_forcing_order(
    model: CausalWanModel, config: MemRoPEConfig, given_frames: int, num_frames: int
) -> None:
    text, given = _prompt(2), _given(2, given_frames)
    pipe = CausalInferencePipeline(model, config)
    chunks = list(pipe.stream(text, num_frames=num_frames, seed=3, initial_latents=given))
    video = torch.cat([chunk.latents for chunk in chunks], dim=1)
    assert [chunk.start_frame for chunk in chunks] == [
        config.chunk_start(index) for index in range(len(chunks))
    ]
    assert torch.equal(video[:, :given_frames], given)
    torch.testing.assert_close(
        video, _reference(model, config, text, given, num_frames, seed=3), rtol=0, atol=0
    )
    assert torch.equal(pipe.generate(text, num_frames=num_frames, seed=3, initial_latents=given), video)


def test_the_given_latents_steer_the_video(model: CausalWanModel) -> None:
    pipe = CausalInferencePipeline(model, CACHE)
    first = pipe.generate(_prompt(), num_frames=6, seed=3, initial_latents=_given(1, 2, seed=5))
    second = pipe.generate(_prompt(), num_frames=6, seed=3, initial_latents=_given(1, 2, seed=6))
    assert not torch.equal(first[:, 2:], second[:, 2:])


def test_a_given_noise_covers_the_generated_frames_only(model: CausalWanModel) -> None:
    pipe = CausalInferencePipeline(model, CACHE)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 4, TINY.in_dim, *LATENT_HW, generator=generator)
    explicit = pipe.generate(
        _prompt(), num_frames=6, noise=noise, generator=generator, initial_latents=_given(1, 2)
    )
    assert torch.equal(explicit, pipe.generate(_prompt(), num_frames=6, seed=3, initial_latents=_given(1, 2)))
    with pytest.raises(
        ValueError,
        match=r"noise must have shape \[1, 4, 4, 4, 6\] \(the generated frames only: num_frames=6 less the 2 frames",
    ):
        pipe.generate(
            _prompt(), num_frames=6, noise=torch.zeros(1, 6, 4, *LATENT_HW), initial_latents=_given(1, 2)
        )


@settings(max_examples=8, deadline=None)
@given(given_chunks=st.integers(1, 4), save_every=st.integers(1, 3))
def test_resume_at_any_chunk_is_bit_identical(
    model: CausalWanModel, tmp_path_factory: pytest.TempPathFactory, given_chunks: int, save_every: int
) -> None:
    """Checkpoints taken while the given chunks are being written, or after, resume to the same video."""
    path = tmp_path_factory.mktemp("resume") / "state.safetensors"
    given, num_frames = _given(1, 2 * given_chunks), 12
    pipe = CausalInferencePipeline(model, CACHE)
    whole = pipe.generate(_prompt(), num_frames=num_frames, seed=4, initial_latents=given)
    stream = pipe.stream(
        _prompt(),
        num_frames=num_frames,
        seed=4,
        initial_latents=given,
        save_every=save_every,
        checkpoint_path=path,
    )
    done = [chunk.latents for chunk in itertools.islice(stream, save_every)]
    resumed = [chunk.latents for chunk in CausalInferencePipeline(model, CACHE).stream(resume_from=path)]
    assert torch.equal(torch.cat(done + resumed, dim=1), whole)


def test_a_checkpoint_inside_the_given_chunks_holds_the_rest_of_them(
    model: CausalWanModel, tmp_path: Path
) -> None:
    pipe = CausalInferencePipeline(model, CACHE)
    stream = pipe.stream(_prompt(), num_frames=10, seed=4, initial_latents=_given(1, 6))
    next(stream)
    state = pipe.state_dict()
    assert torch.equal(state["initial_latents"], _given(1, 6)[:, 2:])
    assert state["meta"]["initial_frames"] == 6
    list(stream)
    assert pipe.state_dict()["initial_latents"] is None
    state["initial_latents"] = state["initial_latents"][:, :2]
    with pytest.raises(
        ValueError, match="holds 2 initial latent frames not yet in the cache, but the run needs 4"
    ):
        list(CausalInferencePipeline(model, CACHE).stream(resume_from=state))


def test_a_prompt_switch_inside_the_given_frames_re_encodes_them(model: CausalWanModel) -> None:
    pipe = CausalInferencePipeline(model, CACHE)
    other = torch.randn(1, 3, TINY.text_dim, generator=torch.Generator().manual_seed(9))
    switched = pipe.generate(
        _prompt(), num_frames=8, seed=3, initial_latents=_given(1, 4), prompt_switches=[(2, other)]
    )
    plain = pipe.generate(_prompt(), num_frames=8, seed=3, initial_latents=_given(1, 4))
    assert torch.equal(switched[:, :4], plain[:, :4])
    assert not torch.equal(switched[:, 4:], plain[:, 4:])


@pytest.mark.parametrize(
    ("given", "kwargs", "error", "match"),
    [
        ([1.0], {}, TypeError, r"initial_latents must be a floating tensor \[1, n, 4, H, W\]"),
        (
            torch.zeros(1, 2, 4, 4, 6, dtype=torch.long),
            {},
            TypeError,
            "initial_latents must be a floating tensor",
        ),
        (torch.zeros(2, 2, 4, 4, 6), {}, ValueError, r"got \[2, 2, 4, 4, 6\]"),
        (torch.zeros(1, 2, 3, 4, 6), {}, ValueError, r"got \[1, 2, 3, 4, 6\]"),
        (
            torch.zeros(1, 3, 4, 4, 6),
            {},
            ValueError,
            r"n a chunk boundary \(2, 4, 6, \.\.\.\) below num_frames=8",
        ),
        (torch.zeros(1, 8, 4, 4, 6), {}, ValueError, "below num_frames=8"),
        (torch.zeros(1, 2, 4, 4, 6), {"latent_hw": (4, 4)}, ValueError, r"\[1, n, 4, 4, 4\]"),
        (torch.full((1, 2, 4, 4, 6), float("nan")), {}, NonFiniteError, "initial_latents holds"),
    ],
)
def test_bad_initial_latents_are_refused_before_anything_runs(
    model: CausalWanModel, given: object, kwargs: dict, error: type[Exception], match: str
) -> None:
    pipe = CausalInferencePipeline(model, CACHE)
    with pytest.raises(error, match=match):
        pipe.stream(_prompt(), num_frames=8, seed=3, initial_latents=given, **kwargs)  # type: ignore[arg-type]
    assert pipe.cache is None


def test_resume_refuses_new_initial_latents(model: CausalWanModel, tmp_path: Path) -> None:
    pipe = CausalInferencePipeline(model, CACHE)
    stream = pipe.stream(_prompt(), num_frames=6, seed=3, initial_latents=_given(1, 2))
    next(stream)
    with pytest.raises(ValueError, match="do not pass initial_latents with it"):
        pipe.stream(resume_from=pipe.state_dict(), initial_latents=_given(1, 2))
