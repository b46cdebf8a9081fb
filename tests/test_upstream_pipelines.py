"""The upstream pipeline shapes through ``attach``: CFG with two caches, LongLive's re-cache, chunk sequences.

Each stand-in follows its upstream pipeline's call pattern (``memrope.testing.upstream_pipelines``);
its output through :func:`memrope.attach` must equal memrope's own computation on the same weights:
two :class:`MemRoPECache` for classifier-free guidance, ``prompt_switches`` of memrope's pipeline for
LongLive's re-cache, ``first_chunk_frames=1`` for Self-Forcing's ``independent_first_frame`` and
1-frame chunks (frame-wise Causal Forcing, where sink protection on rewrites matters).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from memrope import MemRoPEConfig
from memrope.adapters import attach
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline
from memrope.testing.upstream import NUM_TRAIN_TIMESTEPS, SMALL_MODEL, build_pipeline, merged_state_dict

MODEL = SMALL_MODEL
LATENT_HW = (6, 8)
CONFIG = MemRoPEConfig()  # 12 frames = 3 sink + 2 memory + 4 recent + 3 chunk
FIRST_FRAME = dataclasses.replace(CONFIG, first_chunk_frames=1)


def _inputs(frames: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, frames, MODEL["in_dim"], *LATENT_HW, generator=generator)
    context = torch.randn(batch, 5, MODEL["text_dim"], generator=generator)
    other = torch.randn(batch, 5, MODEL["text_dim"], generator=generator)
    return noise, context, other


def _reference_model(pipe: Any) -> CausalWanModel:
    wan = pipe.wan[0]
    model = CausalWanModel(WanConfig(**MODEL))
    state = merged_state_dict(wan) if getattr(pipe, "variant", "") == "longlive" else wan.state_dict()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _tolerance(variant: str) -> dict[str, float]:
    # LoRA unmerged computes W x + s B(A x); the reference has W + s B A folded: float rounding only
    return {"atol": 1e-5, "rtol": 0} if variant == "longlive" else {"atol": 0, "rtol": 0}


def _memrope_video(
    pipe: Any, config: MemRoPEConfig, noise: torch.Tensor, context: torch.Tensor, **options: Any
) -> torch.Tensor:
    ours = CausalInferencePipeline(_reference_model(pipe), config)
    return ours.generate(
        context, num_frames=noise.shape[1], noise=noise, generator=torch.Generator().manual_seed(7), **options
    )


# ------------------------------------------------------------------------------ classifier-free guidance
@torch.no_grad()
def _two_cache_cfg(
    pipe: Any, config: MemRoPEConfig, noise: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    """The CFG stand-in's loop on memrope's own model with one MemRoPE cache per branch."""
    model = _reference_model(pipe)
    batch, num_frames = noise.shape[:2]
    caches = [model.new_cache(config, batch, LATENT_HW, dtype=torch.float32) for _ in range(2)]
    contexts = [model.encode_context(positive), model.encode_context(negative)]
    sigmas = [t / NUM_TRAIN_TIMESTEPS for t in pipe.sampling_timesteps] + [0.0]
    output = torch.zeros_like(noise)
    start = 0
    while start < num_frames:
        frames = config.chunk_frames_at(start)
        latents = noise[:, start : start + frames]
        for index, value in enumerate(pipe.sampling_timesteps):
            t = value * torch.ones([batch, frames])
            cond, uncond = (
                model(latents, t, c, cache=k, start_frame=start) for c, k in zip(contexts, caches)
            )
            flow = uncond + pipe.guidance_scale * (cond - uncond)
            latents = latents + (sigmas[index + 1] - sigmas[index]) * flow
        output[:, start : start + frames] = latents
        for c, k in zip(contexts, caches):
            model(latents, torch.zeros([batch, frames]), c, cache=k, start_frame=start)
        start += frames
    return output


@pytest.mark.parametrize("target", ["pipeline", "wrapper", "model"])
@pytest.mark.parametrize("first_frame", [False, True], ids=["chunks", "first-frame-1"])
def test_cfg_pipeline_generates_like_one_memrope_cache_per_branch(target: str, first_frame: bool) -> None:
    pipe = build_pipeline(
        "self_forcing",
        MODEL,
        pipeline_class="CausalDiffusionInferencePipeline",
        independent_first_frame=first_frame,
    )
    config = FIRST_FRAME if first_frame else CONFIG
    noise, positive, negative = _inputs(16 if first_frame else 18)
    expected = _two_cache_cfg(pipe, config, noise, positive, negative)
    attached = {"pipeline": pipe, "wrapper": pipe.generator, "model": pipe.wan[0]}[target]
    options = {"first_chunk_frames": 1} if first_frame and target != "pipeline" else {}
    with attach(attached, CONFIG, **options) as attachment, torch.no_grad():
        assert attachment.cache_config == config
        first = pipe.inference(noise, positive, negative)
        second = pipe.inference(noise, positive, negative)  # lists reset in place: both caches start over
        caches = attachment.caches
        assert len(caches) == 2 and caches[0] is not caches[1] and attachment.cache is caches[0]
        assert all(cache.layers[0].end_frame == noise.shape[1] for cache in caches)
    torch.testing.assert_close(first, expected, atol=0, rtol=0)
    torch.testing.assert_close(second, expected, atol=0, rtol=0)


def test_cfg_placeholders_replace_both_branch_caches_and_are_dropped_on_remove() -> None:
    pipe = build_pipeline("self_forcing", MODEL, pipeline_class="CausalDiffusionInferencePipeline")
    noise, positive, negative = _inputs(6)
    with attach(pipe, CONFIG), torch.no_grad():
        pipe.inference(noise, positive, negative)
        for name in ("kv_cache_pos", "kv_cache_neg", "crossattn_cache_pos", "crossattn_cache_neg"):
            assert getattr(pipe, name)[0]["k"].shape[1] == 0, name  # placeholders: no upstream cache
        assert pipe.kv_cache_pos is not pipe.kv_cache_neg
    for name in ("kv_cache_pos", "kv_cache_neg", "crossattn_cache_pos", "crossattn_cache_neg"):
        assert getattr(pipe, name) is None, name


def test_a_third_cache_list_reuses_the_least_recently_used_branch() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    wan = pipe.wan[0]
    x, t, context = torch.randn(1, 4, 3, *LATENT_HW), torch.zeros(1, 3), torch.randn(1, 5, 24)
    with attach(wan, CONFIG) as attachment, torch.no_grad():
        lists = []
        for _ in range(3):
            pipe._initialize_kv_cache(batch_size=1, dtype=torch.float32, device="cpu")
            lists.append(pipe.kv_cache1)
            wan(x, t=t, context=context, seq_len=1000, kv_cache=pipe.kv_cache1, current_start=0)
        assert len(attachment.caches) == 2  # the oldest list's cache went to the newest list
        wan(x, t=t, context=context, seq_len=1000, kv_cache=lists[2], current_start=3 * 12)
        assert attachment.caches[-1].layers[0].end_frame == 6  # the newest list's video goes on
        wan(x, t=t, context=context, seq_len=1000, kv_cache=lists[0], current_start=0)
        assert [cache.layers[0].end_frame for cache in attachment.caches] == [6, 3]  # lists[1]'s was reused


# ------------------------------------------------------------------------------ LongLive's re-cache
@pytest.mark.parametrize("variant", ["longlive", "official"])
@pytest.mark.parametrize("switch", [3, 9, 12])
def test_interactive_recache_matches_memrope_prompt_switches(variant: str, switch: int) -> None:
    """At 3 every cached frame is a sink frame (nothing re-cached); at 9 and 12 the window after the sink is."""
    pipe = build_pipeline(variant, MODEL, pipeline_class="InteractiveCausalInferencePipeline")
    noise, context, other = _inputs(18)
    expected = _memrope_video(pipe, CONFIG, noise, context, prompt_switches=[(switch, other)])
    recache_calls: list[tuple[int, int]] = []
    with attach(pipe, CONFIG) as attachment, torch.no_grad():
        handle = attachment.model.patch_embedding.register_forward_hook(
            lambda module, inputs, output: recache_calls.append(tuple(inputs[0].shape[1:3]))  # type: ignore[arg-type]
        )
        output = pipe.inference(noise, [context, other], [switch], generator=torch.Generator().manual_seed(7))
        handle.remove()
    torch.testing.assert_close(output, expected, **_tolerance(variant))
    if switch > 3:
        window = min(switch, CONFIG.cache_frames) - CONFIG.sink_frames - (2 if switch > 12 else 0)
        assert any(shape[1] == window for shape in recache_calls), recache_calls


def test_a_recache_that_misses_the_window_is_refused() -> None:
    pipe = build_pipeline("longlive", MODEL, pipeline_class="InteractiveCausalInferencePipeline")
    noise, context, _ = _inputs(9)
    with attach(pipe, CONFIG) as attachment, torch.no_grad():
        pipe.inference(noise, [context], [], generator=torch.Generator().manual_seed(7))
        window = attachment.cache.recache_window()
        assert window == (3, 6)
        with pytest.raises(ValueError, match=r"frames after the sink, 3\.\.8"):
            pipe.generator(
                noisy_image_or_video=noise[:, 5:9],
                conditional_dict={"prompt_embeds": context},
                timestep=torch.zeros(1, 4),
                kv_cache=pipe.kv_cache1,
                crossattn_cache=pipe.crossattn_cache,
                current_start=5 * pipe.frame_seq_length,
                block_mask=object(),
            )
        assert attachment.cache.layers[0].end_frame == 9


# ------------------------------------------------------------------------------ chunk sequences
@pytest.mark.parametrize("variant", ["self_forcing", "longlive", "official"])
def test_independent_first_frame_generates_like_first_chunk_frames_1(variant: str) -> None:
    pipe = build_pipeline(variant, MODEL, independent_first_frame=True)
    noise, context, _ = _inputs(16)  # 1 + 5 chunks of 3: past the first eviction
    expected = _memrope_video(pipe, FIRST_FRAME, noise, context)
    with attach(pipe, CONFIG) as attachment, torch.no_grad():
        assert attachment.cache_config.first_chunk_frames == 1
        assert "independent_first_frame=True" in attachment.config_source
        output = pipe.inference(noise, context, generator=torch.Generator().manual_seed(7))
        recent = [f"f{frame}" for frame in range(9, 16)]
        assert attachment.cache.slot_layout(0) == ["f0", "f1", "f2", "long", "short", *recent]
    torch.testing.assert_close(output, expected, **_tolerance(variant))


def test_a_first_block_the_objects_do_not_show_is_named() -> None:
    pipe = build_pipeline("self_forcing", MODEL, independent_first_frame=True)
    noise, context, _ = _inputs(4)
    with attach(pipe.generator, CONFIG) as attachment, torch.no_grad():  # the wrapper does not show it
        with pytest.raises(
            ValueError, match=r"independent_first_frame=True: attach\(\.\.\., first_chunk_frames=1\)"
        ):
            pipe.inference(noise, context)
        assert attachment.cache.layers[0].end_frame == 0  # refused before anything was written
    with pytest.raises(ValueError, match="first_chunk_frames=2 but CausalInferencePipelineStandin"):
        attach(pipe, CONFIG, first_chunk_frames=2)


@pytest.mark.parametrize("policy", ["memrope", "sink"])
def test_frame_wise_chunks_generate_like_memrope(policy: str) -> None:
    """1-frame chunks (frame-wise Causal Forcing): every rewrite after frame 0 must leave the sink alone."""
    pipe = build_pipeline("self_forcing", MODEL, chunk_frames=1, independent_first_frame=True)
    config = MemRoPEConfig(policy=policy, chunk_frames=1, cache_frames=8)
    noise, context, _ = _inputs(12)
    expected = _memrope_video(pipe, config, noise, context)
    with attach(pipe, config) as attachment, torch.no_grad():
        assert (
            attachment.cache_config.first_chunk_frames is None
        )  # 1-frame blocks everywhere: nothing special
        output = pipe.inference(noise, context, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(output, expected, atol=0, rtol=0)
