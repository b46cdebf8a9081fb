"""CausalInferencePipeline on a tiny random CausalWanModel: streaming, randomness, batches, dtypes,
checkpoint/resume and input validation."""

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

        def __call__(self, latents: torch.Tensor) -> torch.Tensor:
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
    assert state["noise"].shape == (1, 4, 4, *LATENT_HW)
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
