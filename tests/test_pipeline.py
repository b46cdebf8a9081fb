"""CausalInferencePipeline on a tiny random CausalWanModel: streaming, randomness, batches, dtypes,
checkpoint/resume and input validation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from memrope import noise as noise_module
from memrope.config import MemRoPEConfig
from memrope.loading import CheckpointFormatError
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.pipeline import CausalInferencePipeline, ChunkResult

TINY = WanConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8, text_len=6, freq_dim=16
)
LATENT_HW = (4, 6)
CACHE = MemRoPEConfig(cache_frames=8, sink_frames=1, chunk_frames=2)


@pytest.fixture(scope="module")
def model() -> CausalWanModel:
    torch.manual_seed(0)
    return CausalWanModel(TINY).eval()


def _prompt(batch: int = 1, length: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, TINY.text_dim, generator=torch.Generator().manual_seed(seed))


def _pipeline(model: CausalWanModel, config: MemRoPEConfig = CACHE, **kwargs) -> CausalInferencePipeline:
    return CausalInferencePipeline(model, config, **kwargs)


def test_stream_yields_chunks_in_order_and_generate_concatenates(model: CausalWanModel) -> None:
    pipe = _pipeline(model)
    chunks = list(pipe.stream(_prompt(), num_frames=8, seed=3, latent_hw=LATENT_HW))
    assert [(c.index, c.start_frame) for c in chunks] == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert all(isinstance(c, ChunkResult) and c.frames is None for c in chunks)
    assert all(c.latents.shape == (1, 2, 4, *LATENT_HW) for c in chunks)
    video = pipe.generate(_prompt(), num_frames=8, seed=3, latent_hw=LATENT_HW)
    assert torch.equal(video, torch.cat([c.latents for c in chunks], dim=1))
    assert torch.isfinite(video).all()


def test_initial_noise_is_drawn_first_from_the_generator(model: CausalWanModel) -> None:
    pipe = _pipeline(model)
    from_seed = pipe.generate(_prompt(), num_frames=6, seed=7, latent_hw=LATENT_HW)
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 6, 4, *LATENT_HW, generator=generator)
    explicit = pipe.generate(_prompt(), num_frames=6, noise=noise, generator=generator)
    assert torch.equal(from_seed, explicit)
    other = pipe.generate(_prompt(), num_frames=6, seed=8, latent_hw=LATENT_HW)
    assert not torch.equal(from_seed, other)


def test_intermediate_noise_is_drawn_per_step(model: CausalWanModel) -> None:
    generator = torch.Generator().manual_seed(0)
    pipe = _pipeline(model, denoising_steps=(1000, 750, 500))
    pipe.generate(_prompt(batch=2), num_frames=4, generator=generator, latent_hw=LATENT_HW)
    expected = torch.Generator().manual_seed(0)
    torch.randn(2, 4, 4, *LATENT_HW, generator=expected)
    for _ in range(2 * 2):  # 2 chunks x (3 steps - 1) draws of [B * chunk, C, H, W]
        torch.randn(2 * 2, 4, *LATENT_HW, generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())


def test_batch_items_are_independent(model: CausalWanModel) -> None:
    # one step: no intermediate noise, so each item depends on its own prompt and noise only
    pipe = _pipeline(model, denoising_steps=(1000,))
    prompts = _prompt(batch=2)
    noise = torch.randn(2, 6, 4, *LATENT_HW, generator=torch.Generator().manual_seed(5))
    both = pipe.generate(prompts, num_frames=6, noise=noise, seed=0)
    for item in range(2):
        alone = pipe.generate(prompts[item : item + 1], num_frames=6, noise=noise[item : item + 1], seed=0)
        torch.testing.assert_close(both[item : item + 1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "config, steps",
    [
        (MemRoPEConfig(cache_frames=5, sink_frames=1, chunk_frames=1), (1000, 500)),
        (MemRoPEConfig(policy="sink", cache_frames=6, sink_frames=2, chunk_frames=2), (1000, 750, 500, 250)),
        (MemRoPEConfig(policy="full", chunk_frames=3), (1000,)),
    ],
)
def test_other_chunk_sizes_policies_and_step_lists(
    model: CausalWanModel, config: MemRoPEConfig, steps: tuple[int, ...]
) -> None:
    frames = 4 * config.chunk_frames
    video = _pipeline(model, config, denoising_steps=steps).generate(
        _prompt(), num_frames=frames, seed=0, latent_hw=LATENT_HW
    )
    assert video.shape == (1, frames, 4, *LATENT_HW)
    assert torch.isfinite(video).all()


def test_unwarped_steps_are_used_as_given(model: CausalWanModel) -> None:
    pipe = _pipeline(model, denoising_steps=(1000, 750), warp_denoising_step=False)
    assert pipe.timesteps.tolist() == [1000.0, 750.0]
    assert pipe.generate(_prompt(), num_frames=2, seed=0, latent_hw=LATENT_HW).shape[1] == 2


def test_a_first_chunk_step_list_applies_to_the_first_chunk_only(
    model: CausalWanModel, tmp_path: Path
) -> None:
    seen: list[tuple[int, float]] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["start_frame"], float(args[1][0, 0]))),
        with_kwargs=True,
    )
    try:
        pipe = _pipeline(model, denoising_steps=(1000,), first_chunk_denoising_steps=(1000, 750, 500))
        first = pipe.generate(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW)
    finally:
        handle.remove()
    first_steps = pipe.first_chunk_timesteps.tolist()
    assert len(first_steps) == 3 and pipe.timesteps.tolist() == [1000.0]
    assert seen == [(0, t) for t in first_steps] + [(0, 0.0), (2, 1000.0), (2, 0.0)]
    same = _pipeline(model, denoising_steps=(1000,), first_chunk_denoising_steps=(1000, 750, 500))
    torch.testing.assert_close(same.generate(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW), first)
    next(pipe.stream(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW))
    pipe.save_state(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="first_timesteps"):
        _pipeline(model, denoising_steps=(1000,)).load_state(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="first_chunk_denoising_steps must be a non-empty"):
        _pipeline(model, first_chunk_denoising_steps=(), warp_denoising_step=False)


class _Bfloat16Facade:
    """Presents a float32 model as a bf16 one (bf16 in and out), to test the pipeline's dtype flow."""

    def __init__(self, inner: CausalWanModel) -> None:
        self.inner = inner
        self.config = inner.config
        self.dtypes: set[torch.dtype] = set()

    def new_cache(
        self, cache_config: MemRoPEConfig, batch_size: int, latent_hw: tuple[int, int], **_
    ) -> object:
        return self.inner.new_cache(cache_config, batch_size, latent_hw, dtype=torch.float32)

    def encode_context(self, text_embeds: torch.Tensor) -> object:
        self.dtypes.add(text_embeds.dtype)
        return self.inner.encode_context(text_embeds.float())

    def __call__(
        self, latents: torch.Tensor, timesteps: torch.Tensor, context: object, **kwargs
    ) -> torch.Tensor:
        self.dtypes.add(latents.dtype)
        return self.inner(latents.float(), timesteps, context, **kwargs).bfloat16()


def test_bfloat16_latents_and_noise(model: CausalWanModel) -> None:
    facade = _Bfloat16Facade(model)
    generator = torch.Generator().manual_seed(0)
    video = _pipeline(facade, dtype=torch.bfloat16).generate(
        _prompt(), num_frames=4, generator=generator, latent_hw=LATENT_HW
    )
    assert video.dtype == torch.bfloat16 and facade.dtypes == {torch.bfloat16}
    assert torch.isfinite(video.float()).all()
    expected = torch.Generator().manual_seed(0)
    torch.randn(1, 4, 4, *LATENT_HW, generator=expected, dtype=torch.bfloat16)
    for _ in range(2 * 3):
        torch.randn(2, 4, *LATENT_HW, generator=expected, dtype=torch.bfloat16)
    assert torch.equal(generator.get_state(), expected.get_state())
    reference = _pipeline(model).generate(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW)
    assert (video.float() - reference).abs().max() < 0.5


def test_decoder_gets_every_chunk(model: CausalWanModel) -> None:
    class Decoder:
        def __init__(self) -> None:
            self.resets = 0

        def reset(self) -> None:
            self.resets += 1

        def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
            return latents.mean(dim=2)

    decoder = Decoder()
    chunks = list(
        _pipeline(model, decoder=decoder).stream(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW)
    )
    assert decoder.resets == 1
    for chunk in chunks:
        assert chunk.frames is not None and torch.equal(chunk.frames, chunk.latents.mean(dim=2))


def _latents(chunks: list[ChunkResult]) -> list[torch.Tensor]:
    return [chunk.latents for chunk in chunks]


def test_checkpoint_resume_is_bit_identical(model: CausalWanModel, tmp_path: Path) -> None:
    path = tmp_path / "run.safetensors"
    prompts = _prompt(batch=2)
    full = list(
        _pipeline(model).stream(
            prompts, num_frames=10, seed=11, latent_hw=LATENT_HW, save_every=2, checkpoint_path=path
        )
    )
    assert len(full) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.safetensors"]  # no temporary files left

    resumed = list(_pipeline(model).stream(resume_from=path))  # last checkpoint: after chunk 3
    assert [(c.index, c.start_frame) for c in resumed] == [(4, 8)]
    assert torch.equal(resumed[0].latents, full[4].latents)

    interrupted = _pipeline(model).stream(
        prompts, num_frames=10, seed=11, latent_hw=LATENT_HW, save_every=2, checkpoint_path=path
    )
    for chunk in interrupted:
        if chunk.index == 2:  # checkpoint written after chunk 1; chunk 2 is lost with the "crash"
            break
    fresh = _pipeline(model)
    resumed = list(fresh.stream(resume_from=path))
    assert [c.index for c in resumed] == [2, 3, 4]
    for got, expected in zip(_latents(resumed), _latents(full[2:])):
        assert torch.equal(got, expected)


def test_state_dict_round_trip_in_memory(model: CausalWanModel, tmp_path: Path) -> None:
    pipe = _pipeline(model)
    stream = pipe.stream(_prompt(), num_frames=6, seed=2, latent_hw=LATENT_HW)
    first = next(stream)
    state = pipe.state_dict()
    assert state["meta"]["next_chunk"] == 1 and state["meta"]["start_frame"] == 2
    noise = state["noise"]  # per-item generator states, not the unused noise (lazy initial noise)
    assert noise["mode"] == "lazy" and noise["frames_used"] == 2 and noise["num_frames"] == 6
    assert noise["generator_states"].dtype == torch.uint8 and noise["generator_states"].shape[0] == 1
    rest = list(stream)
    resumed = list(_pipeline(model).stream(resume_from=state))
    assert first.index == 0 and [c.index for c in resumed] == [1, 2]
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(rest, resumed))
    pipe.save_state(tmp_path / "done.safetensors")  # finished run: nothing left to resume
    assert list(_pipeline(model).stream(resume_from=tmp_path / "done.safetensors")) == []


def test_resume_rejects_other_settings(model: CausalWanModel, tmp_path: Path) -> None:
    pipe = _pipeline(model)
    next(pipe.stream(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW))
    pipe.save_state(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="timesteps"):
        _pipeline(model, denoising_steps=(1000, 500)).load_state(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="cache_config"):
        _pipeline(model, MemRoPEConfig(cache_frames=9, sink_frames=1, chunk_frames=2)).stream(
            resume_from=tmp_path / "s.safetensors"
        )
    with pytest.raises(ValueError, match="text_embeds"):
        pipe.stream(_prompt(), resume_from=tmp_path / "s.safetensors")


def test_damaged_checkpoints_are_named(model: CausalWanModel, tmp_path: Path) -> None:
    pipe = _pipeline(model)
    next(pipe.stream(_prompt(), num_frames=4, seed=0, latent_hw=LATENT_HW))
    whole = tmp_path / "s.safetensors"
    pipe.save_state(whole)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-64])
    with pytest.raises(
        CheckpointFormatError, match=rf"{cut} is truncated: expected \d+ bytes, got \d+ \(64 missing\)"
    ):
        _pipeline(model).stream(resume_from=cut)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match=rf"{empty} is empty \(0 bytes\)"):
        _pipeline(model).load_state(empty)


def test_state_dict_needs_a_run(model: CausalWanModel) -> None:
    with pytest.raises(RuntimeError, match="stream"):
        _pipeline(model).state_dict()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_frames": 5}, "num_frames must be a positive multiple of chunk_frames=2"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 4.0}, "num_frames"),
        ({"text_embeds": torch.zeros(0, 3, 8)}, "text_embeds"),
        ({"text_embeds": torch.zeros(1, 3, 5)}, "text_embeds"),
        ({"text_embeds": torch.zeros(1, 7, 8)}, "text_embeds"),
        ({"text_embeds": torch.zeros(3, 8)}, "text_embeds"),
        ({"noise": torch.zeros(1, 6, 4, 4, 6)}, "noise"),
        ({"noise": torch.zeros(2, 4, 4, 4, 6)}, "noise"),
        ({"noise": torch.zeros(1, 4, 4, 4, 6), "latent_hw": (4, 8)}, "noise"),
        ({"latent_hw": (4,)}, "latent_hw"),
        ({"seed": 1, "generator": torch.Generator()}, "generator or seed"),
        ({"save_every": 0, "checkpoint_path": "x"}, "save_every"),
        ({"save_every": 2}, "checkpoint_path"),
        ({"checkpoint_path": "x"}, "save_every"),
    ],
)
def test_bad_input_raises_value_error(model: CausalWanModel, kwargs: dict, match: str) -> None:
    arguments = {"text_embeds": _prompt(), "num_frames": 4, "latent_hw": None}
    arguments.update(kwargs)
    text_embeds = arguments.pop("text_embeds")
    with pytest.raises(ValueError, match=match):
        _pipeline(model).stream(text_embeds, **arguments)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"denoising_steps": ()}, "denoising_steps"),
        ({"denoising_steps": (1200,)}, "denoising_steps"),
        ({"context_noise": -1}, "context_noise"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_settings_raise_value_error(model: CausalWanModel, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _pipeline(model, **kwargs)


# ---------------------------------------------------------------- lazy initial noise


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "config, steps",
    [
        (CACHE, (1000, 750, 500, 250)),
        (MemRoPEConfig(cache_frames=5, sink_frames=1, chunk_frames=1), (1000, 500)),
        (MemRoPEConfig(policy="sink", cache_frames=6, sink_frames=2, chunk_frames=3), (1000, 750)),
    ],
)
def test_lazy_initial_noise_matches_the_full_draw(
    model: CausalWanModel, batch: int, config: MemRoPEConfig, steps: tuple[int, ...]
) -> None:
    frames = 4 * config.chunk_frames
    lazy_generator = torch.Generator().manual_seed(21)
    lazy = _pipeline(model, config, denoising_steps=steps).generate(
        _prompt(batch=batch), num_frames=frames, generator=lazy_generator, latent_hw=LATENT_HW
    )
    # today's behaviour: the whole noise drawn first, then the same generator for the intermediates
    eager_generator = torch.Generator().manual_seed(21)
    noise = torch.randn(batch, frames, 4, *LATENT_HW, generator=eager_generator)
    eager = _pipeline(model, config, denoising_steps=steps).generate(
        _prompt(batch=batch), num_frames=frames, noise=noise, generator=eager_generator
    )
    assert torch.equal(lazy, eager)
    assert torch.equal(lazy_generator.get_state(), eager_generator.get_state())


@pytest.mark.parametrize("batch", [1, 2])
def test_lazy_initial_noise_matches_the_full_draw_in_bfloat16(model: CausalWanModel, batch: int) -> None:
    lazy_generator = torch.Generator().manual_seed(4)
    lazy = _pipeline(_Bfloat16Facade(model), dtype=torch.bfloat16).generate(
        _prompt(batch=batch), num_frames=6, generator=lazy_generator, latent_hw=LATENT_HW
    )
    eager_generator = torch.Generator().manual_seed(4)
    noise = torch.randn(batch, 6, 4, *LATENT_HW, generator=eager_generator, dtype=torch.bfloat16)
    eager = _pipeline(_Bfloat16Facade(model), dtype=torch.bfloat16).generate(
        _prompt(batch=batch), num_frames=6, noise=noise, generator=eager_generator
    )
    assert lazy.dtype == torch.bfloat16 and torch.equal(lazy, eager)
    assert torch.equal(lazy_generator.get_state(), eager_generator.get_state())


def _first_checkpoint(model: CausalWanModel, path: Path, num_frames: int, **kwargs) -> Path:
    stream = _pipeline(model).stream(
        _prompt(batch=2), num_frames=num_frames, seed=0, save_every=1, checkpoint_path=path, **kwargs
    )
    next(stream)
    stream.close()
    return path


def test_checkpoint_size_does_not_grow_with_the_video_length(model: CausalWanModel, tmp_path: Path) -> None:
    short = _first_checkpoint(model, tmp_path / "short.safetensors", 30 * 2, latent_hw=LATENT_HW)
    long = _first_checkpoint(model, tmp_path / "long.safetensors", 300 * 2, latent_hw=LATENT_HW)
    # version 1 kept the unused noise: the long file was 540 frames x 2 items x 96 values x 4 bytes bigger
    assert abs(long.stat().st_size - short.stat().st_size) < 1024  # only the JSON digits differ
    assert next(iter(_pipeline(model).stream(resume_from=long))).index == 1


def test_long_checkpoint_resumes_bit_identically(model: CausalWanModel, tmp_path: Path) -> None:
    path = _first_checkpoint(model, tmp_path / "run.safetensors", 8, latent_hw=LATENT_HW)
    full = _pipeline(model).generate(_prompt(batch=2), num_frames=8, seed=0, latent_hw=LATENT_HW)
    resumed = torch.cat(_latents(list(_pipeline(model).stream(resume_from=path))), dim=1)
    assert torch.equal(resumed, full[:, 2:])


def test_given_noise_is_held_and_checkpointed(model: CausalWanModel, tmp_path: Path) -> None:
    noise = torch.randn(2, 8, 4, *LATENT_HW, generator=torch.Generator().manual_seed(3))
    path = _first_checkpoint(model, tmp_path / "given.safetensors", 8, noise=noise)
    pipe = _pipeline(model)
    full = pipe.generate(_prompt(batch=2), num_frames=8, noise=noise, seed=0)
    state = pipe.load_state(path)
    assert state["noise"]["mode"] == "eager" and torch.equal(state["noise"]["remaining"], noise[:, 2:])
    resumed = torch.cat(_latents(list(_pipeline(model).stream(resume_from=path))), dim=1)
    assert torch.equal(resumed, full[:, 2:])


def test_version_1_checkpoints_still_resume(model: CausalWanModel, tmp_path: Path) -> None:
    path = _first_checkpoint(model, tmp_path / "v2.safetensors", 8, latent_hw=LATENT_HW)
    full = _pipeline(model).generate(_prompt(batch=2), num_frames=8, seed=0, latent_hw=LATENT_HW)
    # rewrite it as version 1 did: the unused initial noise as the tensor "noise"
    tensors = load_file(path)
    with open(path, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    meta = json.loads(header["__metadata__"]["memrope_pipeline_state"])
    meta["version"] = 1
    del meta["noise"]
    del tensors["noise.generator_states"]
    reference = torch.Generator().manual_seed(0)
    tensors["noise"] = torch.randn(2, 8, 4, *LATENT_HW, generator=reference)[:, 2:].contiguous()
    old = tmp_path / "v1.safetensors"
    save_file(tensors, old, metadata={"memrope_pipeline_state": json.dumps(meta)})
    resumed = torch.cat(_latents(list(_pipeline(model).stream(resume_from=old))), dim=1)
    assert torch.equal(resumed, full[:, 2:])


TINY3 = WanConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=3, out_dim=3, text_dim=8, text_len=6, freq_dim=16
)


def test_frames_not_a_multiple_of_16_values_fall_back_to_the_full_draw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model3 = CausalWanModel(TINY3).eval()  # C*H*W = 3*4*6 = 72: no frame-by-frame identity
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # small noise: no warning
        from_seed = _pipeline(model3).generate(_prompt(), num_frames=6, seed=7, latent_hw=LATENT_HW)
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 6, 3, *LATENT_HW, generator=generator)
    assert torch.equal(
        from_seed, _pipeline(model3).generate(_prompt(), num_frames=6, noise=noise, generator=generator)
    )
    path = tmp_path / "eager.safetensors"
    stream = _pipeline(model3).stream(
        _prompt(), num_frames=6, seed=7, latent_hw=LATENT_HW, save_every=1, checkpoint_path=path
    )
    next(stream)
    stream.close()
    state = _pipeline(model3).load_state(path)
    assert state["noise"]["mode"] == "eager" and state["noise"]["remaining"].shape == (1, 4, 3, *LATENT_HW)
    resumed = torch.cat(_latents(list(_pipeline(model3).stream(resume_from=path))), dim=1)
    assert torch.equal(resumed, from_seed[:, 2:])
    monkeypatch.setattr(noise_module, "EAGER_WARN_BYTES", 100)
    with pytest.warns(UserWarning, match="eagerly"):
        _pipeline(model3).stream(_prompt(), num_frames=6, seed=7, latent_hw=LATENT_HW)


def test_seed_outside_the_generator_range_is_named(model: CausalWanModel) -> None:
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64 - 1\]"):
        _pipeline(model).generate(_prompt(), num_frames=2, seed=2**64, latent_hw=LATENT_HW)
