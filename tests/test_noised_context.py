"""CausalInferencePipeline(noised_context=True): each clean chunk is noised to ``context_noise`` before
the context call writes it into the cache (as Self-Forcing's training rollouts do)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from small_pipeline import CACHE, LATENT_HW, STEPS, TINY, small_model

from memrope.flow_matching import FlowMatchScheduler
from memrope.models.wan import CausalWanModel
from memrope.pipeline import CausalInferencePipeline


@pytest.fixture(scope="module")
def model() -> CausalWanModel:
    return small_model()


def _prompt() -> torch.Tensor:
    return torch.randn(1, 3, TINY.text_dim, generator=torch.Generator().manual_seed(1))


def _reference(
    model: CausalWanModel, text: torch.Tensor, num_frames: int, seed: int, context_noise: float
) -> torch.Tensor:
    """The loop written out (shift 1: sigma = t / 1000): per chunk the denoising steps with fresh noise,
    then one more draw of the same generator that noises the clean chunk to ``context_noise`` for the
    call that caches it."""
    scheduler = FlowMatchScheduler(shift=1.0, sigma_min=0.0)
    timesteps = scheduler.warp(STEPS)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, num_frames, TINY.in_dim, *LATENT_HW, generator=generator)
    cache = model.new_cache(CACHE, 1, LATENT_HW)
    context = model.encode_context(text)
    t_context = torch.full((1, CACHE.chunk_frames), float(context_noise))
    video = []
    with torch.no_grad():
        for start in range(0, num_frames, CACHE.chunk_frames):
            x = noise[:, start : start + CACHE.chunk_frames]
            for step, t_value in enumerate(timesteps):
                t = t_value.expand(1, CACHE.chunk_frames).clone()
                x0 = scheduler.to_x0(model(x, t, context, cache=cache, start_frame=start), x, t)
                if step + 1 < len(timesteps):
                    fresh = torch.randn((CACHE.chunk_frames, *x.shape[2:]), generator=generator)
                    x = scheduler.add_noise(x0, fresh.unsqueeze(0), timesteps[step + 1])
            fresh = torch.randn((CACHE.chunk_frames, *x.shape[2:]), generator=generator).unsqueeze(0)
            sigma = context_noise / 1000
            model((1 - sigma) * x0 + sigma * fresh, t_context, context, cache=cache, start_frame=start)
            video.append(x0)
    return torch.cat(video, dim=1)


@pytest.mark.parametrize("context_noise", [100.0, 300.0])
def test_the_cached_chunk_is_noised_with_the_next_draw_of_the_generator(
    model: CausalWanModel, context_noise: float
) -> None:
    pipe = CausalInferencePipeline(model, CACHE, shift=1.0, context_noise=context_noise, noised_context=True)
    video = pipe.generate(_prompt(), num_frames=8, seed=3, latent_hw=LATENT_HW)
    expected = _reference(model, _prompt(), 8, 3, context_noise)
    torch.testing.assert_close(video, expected, rtol=0, atol=2e-6)
    plain = CausalInferencePipeline(model, CACHE, shift=1.0, context_noise=context_noise)
    first_chunk = plain.generate(_prompt(), num_frames=8, seed=3, latent_hw=LATENT_HW)
    assert torch.equal(first_chunk[:, :2], video[:, :2])  # the first chunk sees no cached chunk
    assert not torch.equal(first_chunk[:, 2:], video[:, 2:])


@settings(max_examples=6, deadline=None)
@given(save_every=st.integers(1, 3), switch=st.booleans())
def test_resume_at_any_chunk_is_bit_identical(
    model: CausalWanModel, tmp_path_factory: pytest.TempPathFactory, save_every: int, switch: bool
) -> None:
    """The context noise comes from the run's generator, so a checkpoint resumes to the same video,
    prompt switches (which re-encode the window with noise of their own) included."""
    path = tmp_path_factory.mktemp("resume") / "state.safetensors"
    other = torch.randn(1, 3, TINY.text_dim, generator=torch.Generator().manual_seed(9))
    switches = [(6, other)] if switch else None

    def pipeline() -> CausalInferencePipeline:
        return CausalInferencePipeline(model, CACHE, context_noise=200, noised_context=True)

    whole = pipeline().generate(
        _prompt(), num_frames=12, seed=4, prompt_switches=switches, latent_hw=LATENT_HW
    )
    stream = pipeline().stream(
        _prompt(),
        num_frames=12,
        seed=4,
        latent_hw=LATENT_HW,
        prompt_switches=switches,
        save_every=save_every,
        checkpoint_path=path,
    )
    done = [chunk.latents for chunk in itertools.islice(stream, save_every)]
    resumed = [chunk.latents for chunk in pipeline().stream(resume_from=path)]
    assert torch.equal(torch.cat(done + resumed, dim=1), whole)


def test_a_checkpoint_resumes_only_with_the_same_setting(model: CausalWanModel) -> None:
    noised = CausalInferencePipeline(model, CACHE, context_noise=200, noised_context=True)
    stream = noised.stream(_prompt(), num_frames=8, seed=4, latent_hw=LATENT_HW)
    next(stream)
    state = noised.state_dict()
    plain = CausalInferencePipeline(model, CACHE, context_noise=200)
    with pytest.raises(
        ValueError, match="saved with noised_context=True but this pipeline has noised_context=False"
    ):
        list(plain.stream(resume_from=state))


def test_noised_context_must_be_a_bool(model: CausalWanModel) -> None:
    with pytest.raises(TypeError, match="noised_context must be True or False, got 1"):
        CausalInferencePipeline(model, CACHE, noised_context=1)  # type: ignore[arg-type]
