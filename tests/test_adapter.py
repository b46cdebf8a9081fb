"""The drop-in adapter on stand-ins of the Self-Forcing / LongLive / official MemRoPE objects."""

from __future__ import annotations

import functools

import pytest
import torch

from memrope import MemRoPECache, MemRoPEConfig
from memrope.adapters import Attachment, attach
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline
from memrope.testing.upstream import (
    SMALL_MODEL,
    VARIANTS,
    CausalInferencePipelineStandin,
    CausalWanStandin,
    LoraLinearStandin,
    build_pipeline,
    merged_state_dict,
)

MODEL = SMALL_MODEL
LATENT_HW = (6, 8)
FRAME_SEQLEN = 12
NUM_FRAMES = 18  # 6 chunks: past the first eviction and into steady state
CONFIG = MemRoPEConfig()  # 12 frames = 3 sink + 2 memory + 4 recent + 3 chunk


def _inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, NUM_FRAMES, MODEL["in_dim"], *LATENT_HW, generator=generator)
    context = torch.randn(batch, 5, MODEL["text_dim"], generator=generator)
    return noise, context


def _wan(pipe: CausalInferencePipelineStandin) -> CausalWanStandin:
    return pipe.wan[0]


def _reference_model(pipe: CausalInferencePipelineStandin) -> CausalWanModel:
    """Our CausalWanModel holding the stand-in's weights (LoRA folded in)."""
    wan = _wan(pipe)
    model = CausalWanModel(WanConfig(**MODEL))
    state = merged_state_dict(wan) if pipe.variant == "longlive" else wan.state_dict()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _reference_video(
    pipe: CausalInferencePipelineStandin,
    noise: torch.Tensor,
    context: torch.Tensor,
    config: MemRoPEConfig = CONFIG,
) -> torch.Tensor:
    ours = CausalInferencePipeline(_reference_model(pipe), config)
    return ours.generate(
        context, num_frames=noise.shape[1], noise=noise, generator=torch.Generator().manual_seed(7)
    )


def _run(pipe: CausalInferencePipelineStandin, noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return pipe.inference(noise, context, generator=torch.Generator().manual_seed(7))


def _tolerance(variant: str) -> dict[str, float]:
    # LoRA unmerged computes W x + s B(A x); the reference has W + s B A folded: float rounding only
    return {"atol": 1e-5, "rtol": 0} if variant == "longlive" else {"atol": 0, "rtol": 0}


# ------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", [1, 2])
def test_attached_pipeline_generates_like_memrope(variant: str, batch: int) -> None:
    pipe = build_pipeline(variant, MODEL)
    noise, context = _inputs(batch)
    expected = _reference_video(pipe, noise, context)
    with attach(pipe, CONFIG) as attachment:
        first = _run(pipe, noise, context)
        second = _run(pipe, noise, context)  # a second video: the cache must start over
        assert isinstance(attachment.cache, MemRoPECache)
        assert attachment.cache.batch_size == batch
        assert attachment.cache.slot_layout(0)[3:5] == ["long", "short"]
    torch.testing.assert_close(first, expected, **_tolerance(variant))
    torch.testing.assert_close(second, expected, **_tolerance(variant))


def test_attach_with_an_8bit_cache_matches_memrope_with_the_same_storage() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    noise, context = _inputs(1)
    ours = CausalInferencePipeline(_reference_model(pipe), CONFIG, kv_dtype="int8")
    expected = ours.generate(
        context, num_frames=noise.shape[1], noise=noise, generator=torch.Generator().manual_seed(7)
    )
    with attach(pipe, CONFIG, kv_dtype="int8") as attachment:
        video = _run(pipe, noise, context)
        assert attachment.cache is not None and attachment.cache.kv_dtype == torch.int8
    torch.testing.assert_close(video, expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="kv_dtype"):
        attach(pipe, CONFIG, kv_dtype="fp4")


@pytest.mark.parametrize("variant", VARIANTS)
def test_calls_through_the_wrapper_match_causal_wan_model(variant: str) -> None:
    """Attach to the wrapper (no pipeline): each call's flow equals CausalWanModel's with our cache."""
    pipe = build_pipeline(variant, MODEL)
    reference = _reference_model(pipe)
    noise, context = _inputs(2)
    pipe._initialize_kv_cache(batch_size=2, dtype=torch.float32, device="cpu")  # upstream (unpatched) lists
    pipe._initialize_crossattn_cache(batch_size=2, dtype=torch.float32, device="cpu")
    _wan(pipe)._kv_cache_attr = pipe.kv_cache1
    _wan(pipe)._crossattn_cache_attr = pipe.crossattn_cache
    cache = reference.new_cache(CONFIG, 2, LATENT_HW)
    encoded = reference.encode_context(context)
    with attach(pipe.generator, CONFIG) as attachment, torch.no_grad():
        assert attachment.kind == "wrapper"
        for start in range(0, NUM_FRAMES, 3):
            x = noise[:, start : start + 3]
            for step, value in enumerate([1000.0, 937.5, 0.0]):
                t = torch.full((2, 3), value)
                flow, x0 = pipe.generator(
                    noisy_image_or_video=x,
                    conditional_dict={"prompt_embeds": context},
                    timestep=t,
                    kv_cache=pipe.kv_cache1,
                    crossattn_cache=pipe.crossattn_cache,
                    current_start=start * FRAME_SEQLEN,
                )
                expected = reference(x, t, encoded, cache=cache, start_frame=start)
                torch.testing.assert_close(flow, expected, **_tolerance(variant))
                assert x0.shape == x.shape
                x = x0


@pytest.mark.parametrize("variant", VARIANTS)
def test_attach_to_the_model_itself(variant: str) -> None:
    pipe = build_pipeline(variant, MODEL)
    target = pipe.generator.model  # the Wan model, or the PEFT wrapper around it
    noise, context = _inputs(1)
    expected = _reference_video(pipe, noise, context)
    with attach(target, CONFIG) as attachment:
        assert attachment.kind == "model" and attachment.model is _wan(pipe)
        result = _run(pipe, noise, context)
    torch.testing.assert_close(result, expected, **_tolerance(variant))


# -------------------------------------------------------------------------- no weight copies
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("merge_lora", [False, True])
def test_parameters_are_shared_not_copied(variant: str, merge_lora: bool) -> None:
    pipe = build_pipeline(variant, MODEL)
    wan = _wan(pipe)
    pointers = {name: p.data_ptr() for name, p in wan.named_parameters()}
    noise, context = _inputs(1)
    with attach(pipe, CONFIG, merge_lora=merge_lora) as attachment:
        first = _run(pipe, noise, context)
        assert attachment.model is wan
        assert {name: p.data_ptr() for name, p in wan.named_parameters()} == pointers
        cache_pointers = {
            t.data_ptr() for state in attachment.cache.layers for t in (state.keys, state.values)
        }
        assert not cache_pointers & set(pointers.values())
        with torch.no_grad():  # the adapter reads the live parameters: an in-place edit shows up
            wan.head.head.bias.add_(1.0)
        shifted = _run(pipe, noise, context)
        assert not torch.allclose(first, shifted)
        with torch.no_grad():
            wan.head.head.bias.sub_(1.0)


def test_merge_lora_merges_in_place_and_unmerges_on_remove() -> None:
    pipe = build_pipeline("longlive", MODEL)
    wan = _wan(pipe)
    layers = [m for m in wan.modules() if isinstance(m, LoraLinearStandin)]
    before = {name: p.detach().clone() for name, p in wan.named_parameters()}
    noise, context = _inputs(2)
    expected = _reference_video(pipe, noise, context)
    with attach(pipe, CONFIG, merge_lora=True):
        assert layers and all(layer.merged for layer in layers)
        result = _run(pipe, noise, context)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)
    assert not any(layer.merged for layer in layers)
    for name, p in wan.named_parameters():
        torch.testing.assert_close(p, before[name], atol=1e-6, rtol=0)  # back up to float rounding


# ------------------------------------------------------------------------------ undo
@pytest.mark.parametrize("variant", VARIANTS)
def test_remove_restores_every_patched_attribute(variant: str) -> None:
    pipe = build_pipeline(variant, MODEL)
    wan = _wan(pipe)
    noise, context = _inputs(2)
    own_before = _run(pipe, noise, context)
    original_forward = wan.forward
    original_init = pipe._initialize_kv_cache
    original_text_init = pipe._initialize_crossattn_cache
    attachment = attach(pipe, CONFIG)
    assert "forward" in wan.__dict__ and "_initialize_kv_cache" in pipe.__dict__
    _run(pipe, noise, context)
    assert all(entry["k"].shape[1] == 0 for entry in pipe.kv_cache1)  # placeholders, no upstream allocation
    assert set(pipe.kv_cache1[0]) >= {"k", "v", "global_end_index", "local_end_index"}
    assert set(pipe.crossattn_cache[0]) >= {"k", "v", "is_init"}
    attachment.remove()
    attachment.remove()  # idempotent
    assert not attachment.active and attachment.cache is None
    assert "forward" not in wan.__dict__ and wan.forward == original_forward
    assert "_initialize_kv_cache" not in pipe.__dict__ and pipe._initialize_kv_cache == original_init
    assert (
        "_initialize_crossattn_cache" not in pipe.__dict__
        and pipe._initialize_crossattn_cache == original_text_init
    )
    own_after = _run(pipe, noise, context)
    torch.testing.assert_close(own_after, own_before, atol=0, rtol=0)
    assert pipe.kv_cache1[0]["k"].shape[1] > 0  # upstream allocates its own cache again


def test_context_manager_exit_restores_even_on_error() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    wan = _wan(pipe)
    with pytest.raises(RuntimeError, match="boom"), attach(pipe, CONFIG):
        raise RuntimeError("boom")
    assert "forward" not in wan.__dict__ and "_initialize_kv_cache" not in pipe.__dict__


def test_an_existing_instance_forward_is_restored_exactly() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    wan = _wan(pipe)
    hooked = functools.partial(CausalWanStandin.forward, wan)  # like accelerate's hook
    wan.forward = hooked
    with attach(pipe, CONFIG):
        assert wan.forward is not hooked
    assert wan.__dict__["forward"] is hooked


def test_pipeline_caches_allocated_before_attach_are_dropped() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    noise, context = _inputs(1)
    _run(pipe, noise, context)
    assert pipe.kv_cache1[0]["k"].shape[1] > 0
    with attach(pipe, CONFIG):
        assert pipe.kv_cache1 is None
        _run(pipe, noise, context)
        assert pipe.kv_cache1[0]["k"].shape[1] == 0
    assert pipe.kv_cache1 is None


# ------------------------------------------------------------------------------ cache life cycle
def test_new_video_detection_without_a_pipeline_reset() -> None:
    """The same lists fed again from frame 0 (no re-allocation, no index reset) start a new video."""
    pipe = build_pipeline("longlive", MODEL)
    noise, context = _inputs(1)
    with attach(pipe.generator, CONFIG) as attachment, torch.no_grad():
        pipe._initialize_kv_cache(batch_size=1, dtype=torch.float32, device="cpu")
        outputs = []
        for _ in range(2):
            flows = []
            for start in range(0, 9, 3):
                for value in (1000.0, 0.0):
                    flow, _ = pipe.generator(
                        noise[:, start : start + 3],
                        {"prompt_embeds": context},
                        torch.full((1, 3), value),
                        kv_cache=pipe.kv_cache1,
                        crossattn_cache=None,
                        current_start=start * FRAME_SEQLEN,
                    )
                    flows.append(flow)
            outputs.append(torch.cat(flows))
        assert attachment.cache.layers[0].end_frame == 9
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)


def test_in_place_index_reset_starts_a_new_video() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    noise, context = _inputs(1)
    with attach(pipe.generator, CONFIG) as attachment, torch.no_grad():
        pipe._initialize_kv_cache(batch_size=1, dtype=torch.float32, device="cpu")
        call = {
            "conditional_dict": {"prompt_embeds": context},
            "kv_cache": pipe.kv_cache1,
            "crossattn_cache": None,
        }
        first, _ = pipe.generator(noise[:, :3], timestep=torch.full((1, 3), 1000.0), current_start=0, **call)
        pipe.generator(noise[:, :3], timestep=torch.zeros(1, 3), current_start=0, **call)
        for entry in pipe.kv_cache1:
            entry["global_end_index"].fill_(0)
        again, _ = pipe.generator(noise[:, :3], timestep=torch.full((1, 3), 1000.0), current_start=0, **call)
        assert attachment.cache.layers[0].end_frame == 3
    torch.testing.assert_close(again, first, atol=0, rtol=0)


def test_cache_follows_batch_and_latent_size() -> None:
    pipe = build_pipeline("official", MODEL)
    with attach(pipe, CONFIG) as attachment:
        assert attachment.cache is None
        _run(pipe, *_inputs(2))
        first = attachment.cache
        _run(pipe, *_inputs(2, seed=1))
        assert attachment.cache is first  # same geometry: reused (reset) rather than re-allocated
        _run(pipe, *_inputs(1))
        assert attachment.cache is not first and attachment.cache.batch_size == 1


def test_text_keys_and_values_are_computed_once_per_prompt() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    wan = _wan(pipe)
    calls = []
    wan.text_embedding.register_forward_hook(lambda *args: calls.append(1))
    noise, context = _inputs(1)
    with attach(pipe, CONFIG):
        _run(pipe, noise, context)  # 6 chunks x 5 model calls
        assert len(calls) == 1
        _run(pipe, noise, context)  # the pipeline resets is_init: recomputed once
        assert len(calls) == 2
        _run(pipe, noise, context.clone())  # another prompt tensor
        assert len(calls) == 3
        assert all(bool(entry["is_init"]) for entry in pipe.crossattn_cache)


def test_calls_without_a_cache_go_to_the_original_forward() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    wan = _wan(pipe)
    x = torch.randn(1, 4, 3, *LATENT_HW)
    args = {"t": torch.full((1, 3), 500.0), "context": torch.randn(1, 5, 24), "seq_len": 1000}
    with torch.no_grad():
        expected = wan(x, **args)
        with attach(wan, CONFIG):
            result = wan(x, **args)
    torch.testing.assert_close(result, expected, atol=0, rtol=0)


def test_list_inputs_as_upstream_passes_them() -> None:
    """x as a list of [C, F, H, W] and context as a list of [L_i, text_dim] (unequal lengths)."""
    pipe = build_pipeline("self_forcing", MODEL)
    wan = _wan(pipe)
    reference = _reference_model(pipe)
    x = torch.randn(2, 4, 3, *LATENT_HW)
    context = [torch.randn(5, 24), torch.randn(3, 24)]
    padded = torch.stack([torch.cat([u, u.new_zeros(8 - u.shape[0], 24)]) for u in context])
    t = torch.full((2, 3), 1000.0)
    cache = reference.new_cache(CONFIG, 2, LATENT_HW)
    with attach(wan, CONFIG), torch.no_grad():
        pipe._initialize_kv_cache(batch_size=2, dtype=torch.float32, device="cpu")
        flow = wan(list(x), t=t, context=context, seq_len=1000, kv_cache=pipe.kv_cache1, current_start=0)
        expected = reference(x.transpose(1, 2), t, padded, cache=cache, start_frame=0)
    torch.testing.assert_close(flow, expected.transpose(1, 2), atol=0, rtol=0)


# ------------------------------------------------------------------------------ configuration and errors
def test_default_config_takes_the_pipeline_chunk_size_and_options_override() -> None:
    pipe = build_pipeline("self_forcing", MODEL, chunk_frames=2)
    with attach(pipe, policy="sink", cache_frames=8) as attachment:
        assert attachment.cache_config == MemRoPEConfig(policy="sink", cache_frames=8, chunk_frames=2)
        _run(pipe, *_inputs(1))
        assert attachment.cache.slot_layout(0)[:3] == ["f0", "f1", "f2"]
    with attach(pipe, MemRoPEConfig(chunk_frames=2), alpha_long=0.5) as attachment:
        assert attachment.cache_config.alpha_long == 0.5
    with pytest.raises(ValueError, match="num_frame_per_block"):
        attach(pipe, MemRoPEConfig(chunk_frames=3))


def test_errors() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    wan = _wan(pipe)
    with pytest.raises(TypeError, match="unknown options"):
        attach(pipe, colour="red")
    with pytest.raises(TypeError, match="causal inference pipeline"):
        attach(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="MemRoPEConfig"):
        attach(pipe, {"policy": "sink"})  # type: ignore[arg-type]
    with attach(pipe, CONFIG) as attachment:
        assert isinstance(attachment, Attachment) and "active" in repr(attachment)
        with pytest.raises(RuntimeError, match="already attached"):
            attach(pipe.generator, CONFIG)
        pipe._initialize_kv_cache(batch_size=1, dtype=torch.float32, device="cpu")
        call = {
            "t": torch.full((1, 3), 1000.0),
            "context": torch.randn(1, 5, 24),
            "seq_len": 1000,
            "kv_cache": pipe.kv_cache1,
        }
        x = torch.randn(1, 4, 3, *LATENT_HW)
        with pytest.raises(ValueError, match="whole number of frames"):
            wan(x, current_start=5, **call)
        with pytest.raises(NotImplementedError, match="text-to-video"):
            wan(x, current_start=0, y=[x[0]], **call)
        with pytest.raises(NotImplementedError, match="cache_start"):
            wan(x, current_start=0, cache_start=12, **call)
        with pytest.raises(NotImplementedError, match="sink_recache_after_switch"):
            wan(x, current_start=0, sink_recache_after_switch=True, **call)
        wan(x, current_start=0, sink_recache_after_switch=False, **call)  # falsy extras are ignored
    attach(pipe, CONFIG).remove()  # attachable again once removed


# ------------------------------------------------------------------------------ one attachment per model
@pytest.mark.parametrize("variant", VARIANTS)
def test_attaching_twice_is_refused_through_any_of_the_objects(variant: str) -> None:
    """PEFT's wrappers forward attributes to the Wan model: the guard must key on the model itself."""
    pipe = build_pipeline(variant, MODEL)
    wan = _wan(pipe)
    targets = {
        "pipeline": pipe,
        "wrapper": pipe.generator,
        "generator.model": pipe.generator.model,
        "wan": wan,
    }
    for first_name, first in targets.items():
        with attach(first, CONFIG) as attachment:
            assert attachment.model is wan, first_name
            assert "forward" in wan.__dict__
            if pipe.generator.model is not wan:  # PEFT: the model inside is patched, not the wrapper
                assert "forward" not in pipe.generator.model.__dict__
            for second_name, second in targets.items():
                with pytest.raises(RuntimeError, match="already attached"):
                    attach(second, CONFIG)
                assert attachment.active, (first_name, second_name)
        assert "forward" not in wan.__dict__


# ------------------------------------------------------------------------------ unsupported upstream features
def test_sink_recache_flag_names_the_longlive_feature() -> None:
    pipe = build_pipeline("self_forcing", MODEL)
    wan = _wan(pipe)
    with attach(wan, CONFIG), torch.no_grad():
        pipe._initialize_kv_cache(batch_size=1, dtype=torch.float32, device="cpu")
        with pytest.raises(
            NotImplementedError, match=r"sink_recache_after_switch=True \(LongLive's KV re-cache"
        ):
            wan(
                torch.randn(1, 4, 3, *LATENT_HW),
                t=torch.zeros(1, 3),
                context=torch.randn(1, 5, 24),
                seq_len=1000,
                kv_cache=pipe.kv_cache1,
                current_start=0,
                sink_recache_after_switch=True,
            )


# ------------------------------------------------------------------------------ the official pipeline's own settings
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, MemRoPEConfig()),
        ({"compression_method": "eviction"}, MemRoPEConfig(policy="sink")),
        ({"local_attn_size": -1}, MemRoPEConfig(policy="full")),
        (
            {"ema_adaptive": True, "ema_alpha_short": 0.15},
            MemRoPEConfig(pooling="per_position", adaptive_short_rate=True, alpha_short=0.15),
        ),
        (
            {"sink_size": 1, "local_attn_size": 8, "ema_alpha_long": 0.05},
            MemRoPEConfig(sink_frames=1, cache_frames=8, alpha_long=0.05),
        ),
        ({"chunk_frames": 1, "sink_size": 3}, MemRoPEConfig(chunk_frames=1)),
    ],
    ids=["paper", "eviction", "unbounded", "adaptive", "sizes-alpha", "chunk1"],
)
def test_official_pipeline_settings_are_read_by_default(
    settings: dict[str, object], expected: MemRoPEConfig
) -> None:
    pipe = build_pipeline("official", MODEL, **settings)  # type: ignore[arg-type]
    for target in (pipe, pipe.generator, _wan(pipe)):
        with attach(target) as attachment:
            assert attachment.cache_config == expected
            assert attachment.config_source == "official MemRoPE settings of blocks[*].self_attn"


def test_official_settings_drive_the_generation() -> None:
    pipe = build_pipeline("official", MODEL, compression_method="eviction", sink_size=2)
    noise, context = _inputs(1)
    expected = _reference_video(pipe, noise, context, MemRoPEConfig(policy="sink", sink_frames=2))
    with attach(pipe):
        result = _run(pipe, noise, context)
    torch.testing.assert_close(result, expected, atol=0, rtol=0)


def test_official_settings_fall_back_to_the_pipeline_args() -> None:
    pipe = build_pipeline("official", MODEL, compression_method="eviction", local_attn_size=9)
    for block in _wan(pipe).blocks:
        for name in ("compression_method", "ema_alpha_long", "ema_alpha_short", "ema_adaptive"):
            delattr(block.self_attn, name)
    with attach(pipe) as attachment:
        assert attachment.cache_config == MemRoPEConfig(policy="sink", cache_frames=9)
        assert attachment.config_source == "official MemRoPE settings of pipeline.args.model_kwargs"
    with attach(pipe.generator) as attachment:  # no pipeline, nothing on the modules: the paper's settings
        assert attachment.cache_config == MemRoPEConfig(chunk_frames=3)
        assert attachment.config_source == "MemRoPEConfig defaults"


def test_explicit_options_and_config_override_the_official_settings() -> None:
    pipe = build_pipeline("official", MODEL, compression_method="eviction", sink_size=2, ema_alpha_short=0.2)
    with attach(pipe, policy="memrope") as attachment:
        assert attachment.cache_config == MemRoPEConfig(policy="memrope", sink_frames=2, alpha_short=0.2)
        assert (
            attachment.config_source
            == "official MemRoPE settings of blocks[*].self_attn, overridden by ['policy']"
        )
    with attach(pipe, MemRoPEConfig(alpha_long=0.5)) as attachment:
        assert attachment.cache_config == MemRoPEConfig(alpha_long=0.5)
        assert attachment.config_source == "cache_config argument"


def test_self_forcing_and_longlive_keep_the_paper_settings() -> None:
    for variant in ("self_forcing", "longlive"):
        pipe = build_pipeline(
            variant, MODEL, local_attn_size=-1, sink_size=0
        )  # upstream's own: a growing cache
        with attach(pipe) as attachment:
            assert attachment.cache_config == MemRoPEConfig()
            assert attachment.config_source == "MemRoPEConfig defaults"


def test_official_settings_that_cannot_be_used_are_named() -> None:
    pipe = build_pipeline("official", MODEL)
    _wan(pipe).blocks[1].self_attn.ema_alpha_long = 0.2
    with pytest.raises(ValueError, match=r"attention modules disagree on ema_alpha_long: \[0.01, 0.2\]"):
        attach(pipe)
    with pytest.raises(ValueError, match=r"compression_method='output_preserve'.*mode must be one of"):
        attach(build_pipeline("official", MODEL, compression_method="output_preserve"))
    with pytest.raises(
        ValueError, match=r"local_attn_size=7.*cache_frames must be >= .* = 8.*pass cache_config="
    ):
        attach(build_pipeline("official", MODEL, local_attn_size=7))
    with attach(
        build_pipeline("official", MODEL, local_attn_size=7), MemRoPEConfig(policy="sink", cache_frames=7)
    ) as attachment:
        assert attachment.cache_config.cache_frames == 7  # an explicit config needs none of them
