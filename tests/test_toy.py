"""The toy model: its world, its decoder, its shipped weights and what a short run of it shows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import cast

import pytest
import torch
from safetensors import safe_open

from memrope import components
from memrope.cache import MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.loading import CHECKPOINTS, PackageFile, check_safetensors_file, resolve_checkpoint
from memrope.models.wan import CausalWanModel
from memrope.models.wan_forward import token_grid, wan_forward
from memrope.presets import PRESETS, TINY_MODEL_CONFIG, get_preset, tiny_model
from memrope.toy import TOY_MODEL_CONFIG, ToyDecoder, native_frames, toy_weights_path
from memrope.toy.world import (
    LATENT_CHANNELS,
    LATENT_HW,
    NATIVE_HW,
    PALETTE,
    background,
    frames_to_latents,
    latents_to_frames,
    measure_frames,
    render_frames,
    sample_scene,
    world_latents,
)
from memrope.vae import TinyDecoder

MAX_WEIGHTS_BYTES = 3_500_000
FILL_OF_SHAPE = {0: 0.79, 1: 1.0, 2: 0.5}  # circle, square, triangle


TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_toy.py"


def train_script() -> ModuleType:
    """``scripts/train_toy.py`` imported as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("train_toy", TRAIN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def noise_frames(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, count, 3, *NATIVE_HW, generator=generator) * 2 - 1


# ------------------------------------------------------------------------------------------- world
def test_world_is_a_function_of_its_seed_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = world_latents(7, 6, batch_size=2)
    assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(first, world_latents(7, 6, batch_size=2))
    assert not torch.equal(first, world_latents(8, 6, batch_size=2))
    assert first.shape == (2, 6, LATENT_CHANNELS, *LATENT_HW)
    scene = sample_scene(7, batch_size=2)
    assert all(len(set(row.tolist())) == len(row) for row in scene.colours)


def test_latent_code_is_exact_and_the_background_is_fixed() -> None:
    frames = render_frames(sample_scene(3, 2), torch.arange(0, 20, 4))
    assert torch.equal(latents_to_frames(frames_to_latents(frames)), frames)
    assert torch.equal(background(), background())
    with pytest.raises(ValueError, match="latents must have shape"):
        latents_to_frames(torch.zeros(1, 2, 16, *LATENT_HW))
    with pytest.raises(TypeError, match="seed must be an int"):
        sample_scene("7")  # type: ignore[arg-type]


def test_measure_finds_each_object_with_its_colour_and_shape() -> None:
    scene = sample_scene(11, batch_size=8)
    measure = measure_frames(render_frames(scene, torch.tensor([0])))
    matched = 0
    for item in range(8):
        for colour, shape in zip(scene.colours[item].tolist(), scene.shapes[item].tolist()):
            count = measure.counts[item, 0, colour]
            assert count > 0
            if abs(float(measure.fill[item, 0, colour]) - FILL_OF_SHAPE[shape]) < 0.12:
                matched += 1
    assert matched >= 0.8 * 8 * 3  # overlapping objects hide parts of each other
    assert float(measure.background_error.max()) < 0.03
    assert float(measure_frames(noise_frames(4)).background_error.min()) > 0.3


# ------------------------------------------------------------------------------------------ decoder
def test_toy_decoder_shows_the_world_frames_and_blends_between_them() -> None:
    scene = sample_scene(5, 2)
    latents = world_latents(5, 6, 2)
    decoder = ToyDecoder()
    first, second = decoder.decode_chunk(latents[:, :3]), decoder.decode_chunk(latents[:, 3:])
    assert first.shape == (2, 9, 3, 128, 192) and second.shape == (2, 12, 3, 128, 192)
    video = native_frames(torch.cat([first, second], dim=1))
    world = render_frames(scene, torch.arange(0, 24, 4))
    assert torch.allclose(video[:, ::4], world, atol=1e-6)
    halfway = (world[:, 1] + world[:, 2]) / 2
    assert torch.allclose(video[:, 6], halfway, atol=1e-6)
    decoder.reset()
    assert decoder.decode_chunk(latents[:, :1]).shape[1] == 1
    with pytest.raises(ValueError, match="expected latents"):
        decoder.decode_chunk(torch.zeros(1, 3, 16, *LATENT_HW))


# ----------------------------------------------------------------------------------- training
def test_teacher_forcing_pass_equals_the_pipeline_walk_through_the_cache() -> None:
    """One block-causal call of scripts/train_toy.py gives, for every noisy chunk, the flow that the
    pipeline's walk (denoising call, then clean context call, chunk after chunk) gives at inference."""
    script = train_script()
    frames, chunk = script.TRAIN_FRAMES, script.CHUNK_FRAMES
    torch.manual_seed(0)
    model = CausalWanModel(TOY_MODEL_CONFIG).eval()
    generator = torch.Generator().manual_seed(1)
    clean = world_latents(2, frames, 1)
    noisy = torch.randn(clean.shape, generator=generator)
    noisy_times = torch.tensor([[1000.0, 750.0, 500.0, 250.0]]).repeat_interleave(chunk, dim=1)
    context = model.encode_context(torch.zeros(1, 1, TOY_MODEL_CONFIG.text_dim))
    grid = token_grid(model.config, LATENT_HW)
    stand_in = script.TeacherForcingContext(
        frames, chunk, grid, model.config.num_heads, model.config.head_dim
    )
    video = torch.cat([clean[:, : frames - chunk], noisy], dim=1)
    times = torch.cat([torch.zeros(1, frames - chunk), noisy_times], dim=1)
    with torch.no_grad():
        taught = wan_forward(
            model,
            video.transpose(1, 2),
            times,
            context,
            cache=cast(MemRoPECache, stand_in),
            start_frame=0,
            config=model.config,
            attention=script.block_causal_attention(frames, chunk, grid[0] * grid[1]),
        )[:, frames - chunk :]
        cache = model.new_cache(MemRoPEConfig(), 1, LATENT_HW)
        walked = []
        for start in range(0, frames, chunk):
            part = slice(start, start + chunk)
            walked.append(
                model(noisy[:, part], noisy_times[:, part], context, cache=cache, start_frame=start)
            )
            model(clean[:, part], torch.zeros(1, chunk), context, cache=cache, start_frame=start)
    torch.testing.assert_close(taught, torch.cat(walked, dim=1), atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- shipped weights
def test_shipped_weights_are_safetensors_that_load_strictly() -> None:
    path = toy_weights_path()
    assert path.is_file() and path.stat().st_size < MAX_WEIGHTS_BYTES
    check_safetensors_file(path)
    expected = CausalWanModel(TOY_MODEL_CONFIG).state_dict()
    with safe_open(str(path), framework="pt") as weights:
        names = set(weights.keys())
        assert names == set(expected)
        for name in names:
            tensor = weights.get_tensor(name)
            assert tensor.shape == expected[name].shape and bool(torch.isfinite(tensor).all()), name
    model = components.load_model(get_preset("toy"), device="cpu")
    assert not model.training and not any(parameter.requires_grad for parameter in model.parameters())
    for block in model.blocks:  # unconditional: the cross-attention adds nothing
        assert not bool(block.cross_attn.o.weight.any()) and not bool(block.cross_attn.o.bias.any())


def test_toy_checkpoint_resolves_to_the_packaged_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from memrope import loading

    assert resolve_checkpoint("toy") == toy_weights_path()
    missing = PackageFile("memrope.toy", "no_such_weights.safetensors")
    entries = dict(CHECKPOINTS)
    entries["toy-missing"] = type(CHECKPOINTS["toy"])(weights=missing, kind="safetensors")
    monkeypatch.setattr(loading, "CHECKPOINTS", entries)
    with pytest.raises(FileNotFoundError, match="no_such_weights.safetensors"):
        resolve_checkpoint("toy-missing")


# ----------------------------------------------------------------------------------------- presets
def test_toy_preset_runs_locally_and_tiny_stays_random() -> None:
    toy, tiny = get_preset("toy"), PRESETS["tiny"]
    assert toy.checkpoint == "toy" and toy.text_encoder == "hash" and toy.vae == "toy"
    assert toy.model_config == TOY_MODEL_CONFIG and (toy.height, toy.width) == (128, 192)
    assert toy.runs_locally and toy.memory_estimate().text_encoder == 0
    assert isinstance(components.load_decoder(toy), ToyDecoder)
    assert tiny.checkpoint is None and tiny.vae == "tiny" and tiny.model_config == TINY_MODEL_CONFIG
    assert isinstance(components.load_decoder(tiny), TinyDecoder)
    seeded = components.load_model(tiny, device="cpu").state_dict()
    assert all(torch.equal(tensor, tiny_model().state_dict()[name]) for name, tensor in seeded.items())
    with pytest.raises(ValueError, match="toy decoder decodes 12-channel"):
        components.load_decoder(tiny, "toy")


# ------------------------------------------------------------------------------------ a short run
@pytest.mark.xfail(
    strict=True,
    reason="issue 14 not done: the shipped weights (800 steps) draw the first chunk blurred from noise (one object of "
    "three) and it fades within two chunks; they continue real context for 2-3 chunks only",
)
def test_a_short_toy_run_shows_moving_shapes_not_noise() -> None:
    preset = get_preset("toy")
    model = components.load_model(preset, device="cpu")
    decoder = ToyDecoder()
    pipeline = components.make_pipeline(preset, model, decoder=decoder)
    text = components.load_text_encoder(preset).encode(["coloured shapes bouncing"])
    chunks = list(pipeline.stream(text, num_frames=12, seed=0, latent_hw=preset.latent_hw))
    video = native_frames(torch.cat([chunk.frames for chunk in chunks if chunk.frames is not None], dim=1))
    steps = (video[:, 1:] - video[:, :-1]).abs().mean(dim=(2, 3, 4))
    noise = noise_frames(video.shape[1])
    noise_steps = (noise[:, 1:] - noise[:, :-1]).abs().mean(dim=(2, 3, 4))
    assert float(steps.max()) < 0.05 < float(noise_steps.min())
    world = measure_frames(latents_to_frames(torch.cat([chunk.latents for chunk in chunks], dim=1)))
    assert float(world.background_error.max()) < 0.1
    first, last = 0, world.counts.shape[1] - 1
    objects = (world.counts[0, first] >= 15) & (world.fill[0, first] >= 0.4)
    assert int(objects.sum()) >= 2, world.counts[0, first]
    held = objects & (world.counts[0, last] >= 0.5 * world.counts[0, first]) & (world.fill[0, last] >= 0.4)
    assert bool(held[objects].all()), (world.counts[0, [first, last]], world.fill[0, [first, last]])
    moved = (world.centroids[0, last] - world.centroids[0, first]).norm(dim=-1)[objects]
    assert float(moved.max()) > 2.0
    assert PALETTE.shape == (6, 3)
