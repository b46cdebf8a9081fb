"""The toy model: its world, its decoder, its shipped weights and what a short run of it shows."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from cli_helpers import needs_video
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file
from script_modules import import_script

from memrope import components
from memrope.cli import main
from memrope.loading import CHECKPOINTS, PackageFile, check_safetensors_file, resolve_checkpoint
from memrope.models.wan import CausalWanModel
from memrope.models.wan_forward import token_grid
from memrope.presets import PRESETS, TINY_MODEL_CONFIG, get_preset, tiny_model
from memrope.toy import (
    TOY_CACHE,
    TOY_CONTEXT_NOISE,
    TOY_GIVEN_FRAMES,
    TOY_LATENT_FRAMES,
    TOY_MODEL_CONFIG,
    ToyDecoder,
    native_frames,
    toy_weights_path,
)
from memrope.toy.world import (
    LATENT_CHANNELS,
    LATENT_HW,
    NATIVE_HW,
    NUM_OBJECTS,
    OBJECT_SIZE,
    PALETTE,
    TEMPORAL_FACTOR,
    VELOCITY,
    FrameMeasure,
    background,
    frames_to_latents,
    latents_to_frames,
    measure_frames,
    positions,
    render_frames,
    sample_scene,
    world_latents,
    wrapped_offset,
)
from memrope.vae import TinyDecoder

MAX_WEIGHTS_BYTES = 6_000_000
#: fill ratio of each shape (circle, square, triangle) on the pixel grid: a triangle this small,
#: pixelised, fills 0.5-0.66 of its bounding box depending on where it sits
FILL_OF_SHAPE = {0: (0.67, 0.91), 1: (0.88, 1.0), 2: (0.45, 0.7)}


TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_toy.py"


def train_script() -> ModuleType:
    """``scripts/train_toy.py`` imported as a module (it is not part of the package)."""
    return import_script(TRAIN_SCRIPT)


@functools.cache
def toy_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, executed once, after ``toy_drift.py``, whose definitions
    the toy benchmarks share."""
    if name != "toy_drift":
        toy_benchmark("toy_drift")
    return import_script(TRAIN_SCRIPT.parents[1] / "benchmarks" / f"{name}.py")


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
    latents = frames_to_latents(frames)
    torch.testing.assert_close(latents_to_frames(latents), frames, rtol=0, atol=1e-6)
    assert abs(float(latents.std()) - 1) < 0.15 and abs(float(latents.mean())) < 0.15  # as a VAE's latents
    assert torch.equal(background(), background())
    with pytest.raises(ValueError, match="latents must have shape"):
        latents_to_frames(torch.zeros(1, 2, 16, *LATENT_HW))
    with pytest.raises(TypeError, match="seed must be an int"):
        sample_scene("7")  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), batch=st.integers(1, 3))
def test_every_object_steps_one_whole_pixel_right_per_latent_frame_and_wraps_round(
    seed: int, batch: int
) -> None:
    scene = sample_scene(seed, batch)
    assert torch.equal(scene.velocity, VELOCITY.expand_as(scene.velocity))
    centres = positions(scene, TEMPORAL_FACTOR * torch.arange(100))  # [B, K, T, 2], one per latent frame
    rows, cols = centres[..., 0], centres[..., 1]
    assert torch.equal(rows, rows[..., :1].expand_as(rows))
    assert float(rows.min()) >= OBJECT_SIZE and float(rows.max()) <= NATIVE_HW[0] - OBJECT_SIZE
    assert float(cols.min()) >= 0 and float(cols.max()) < NATIVE_HW[1]
    steps = wrapped_offset(centres[:, :, 1:], centres[:, :, :-1])
    torch.testing.assert_close(steps, torch.tensor([0.0, 1.0]).expand_as(steps), rtol=0, atol=1e-4)
    for first, second in itertools.combinations(range(NUM_OBJECTS), 2):  # never overlapping
        apart = wrapped_offset(centres[:, first], centres[:, second])[..., 1].abs()
        assert float(apart.min()) > 2 * OBJECT_SIZE


def test_the_world_repeats_once_the_objects_have_gone_round() -> None:
    scene = sample_scene(4, 3)
    once_round = TEMPORAL_FACTOR * NATIVE_HW[1]  # 48 latent frames at 1 pixel each
    frames = render_frames(scene, torch.tensor([0, 4, once_round, once_round + 4]))
    torch.testing.assert_close(frames[:, 2:], frames[:, :2], rtol=0, atol=1e-5)
    assert not torch.allclose(frames[:, 1], frames[:, 0])


@settings(max_examples=50, deadline=None)
@given(
    to=st.tuples(st.floats(-40, 40), st.floats(-100, 100)),
    origin=st.tuples(st.floats(-40, 40), st.floats(-100, 100)),
)
def test_wrapped_offset_takes_the_short_way_round(
    to: tuple[float, float], origin: tuple[float, float]
) -> None:
    offset = wrapped_offset(torch.tensor(to), torch.tensor(origin))
    width = NATIVE_HW[1]
    assert float(offset[0]) == pytest.approx(to[0] - origin[0], abs=1e-4)
    assert -width / 2 - 1e-4 <= float(offset[1]) <= width / 2 + 1e-4
    turns = (to[1] - origin[1] - float(offset[1])) / width
    assert turns == pytest.approx(round(turns), abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(columns=st.lists(st.booleans(), min_size=NATIVE_HW[1], max_size=NATIVE_HW[1]))
def test_the_measure_spans_each_colour_by_its_shortest_arc_round_the_wrap(columns: list[bool]) -> None:
    width = NATIVE_HW[1]
    frame = background().clone()
    frame[:, 10:14][:, :, torch.tensor(columns)] = PALETTE[0].view(3, 1, 1)
    measure = measure_frames(frame.view(1, 1, 3, *NATIVE_HW))
    present = [column for column, there in enumerate(columns) if there]
    if not present:
        assert math.isnan(float(measure.fill[0, 0, 0])) and float(measure.counts[0, 0, 0]) == 0
        return
    shortest = min(max((column - start) % width for column in present) + 1 for start in range(width))
    assert float(measure.fill[0, 0, 0]) == pytest.approx(len(present) / shortest)
    centre = float(measure.centroids[0, 0, 0, 1])
    deviations = [(column - centre + width / 2) % width - width / 2 for column in present]
    if shortest < width / 2:  # the arc's own columns, measured from its centroid, balance
        assert sum(deviations) == pytest.approx(0.0, abs=1e-3)


def test_an_object_split_by_the_wrap_measures_as_one() -> None:
    scene = sample_scene(9, 1)
    times = TEMPORAL_FACTOR * torch.arange(NATIVE_HW[1])  # once round: every object crosses the edge
    measure = measure_frames(render_frames(scene, times))
    truth = positions(scene, times)  # [1, K, T, 2]
    for index, colour in enumerate(scene.colours[0].tolist()):
        counts = measure.counts[0, :, colour]
        assert float(counts.min()) >= 0.85 * float(counts.max())
        fill = measure.fill[0, :, colour]
        assert float(fill.max() - fill.min()) < 0.2
        centre = measure.centroids[0, :, colour] + 0.5  # pixel indices: centres at +0.5
        assert float(wrapped_offset(centre, truth[0, index]).norm(dim=-1).max()) < 0.5


def test_measure_finds_each_object_with_its_colour_and_shape() -> None:
    scene = sample_scene(11, batch_size=8)
    measure = measure_frames(render_frames(scene, torch.tensor([0])))
    matched = 0
    for item in range(8):
        for colour, shape in zip(scene.colours[item].tolist(), scene.shapes[item].tolist()):
            count = measure.counts[item, 0, colour]
            assert count > 0
            low, high = FILL_OF_SHAPE[shape]
            if low <= float(measure.fill[item, 0, colour]) <= high:
                matched += 1
    assert matched == 8 * NUM_OBJECTS  # the objects never overlap
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
    """One block-causal call of scripts/train_toy.py gives, for every generated frame, the flow that the
    pipeline's walk (given frames written, then per chunk a denoising call and a clean context call)
    gives at inference through the toy cache."""
    script = train_script()
    frames, chunk, given = script.TRAIN_FRAMES, script.CHUNK_FRAMES, script.GIVEN_FRAMES
    assert (frames, chunk, given) == (TOY_CACHE.cache_frames, TOY_CACHE.chunk_frames, TOY_GIVEN_FRAMES)
    torch.manual_seed(0)
    model = CausalWanModel(TOY_MODEL_CONFIG).eval()
    generator = torch.Generator().manual_seed(1)
    clean = world_latents(2, frames, 1)
    noisy = torch.randn(1, frames - given, *clean.shape[2:], generator=generator)
    levels = torch.tensor([1000.0, 750.0, 500.0, 250.0])
    noisy_times = levels[torch.arange(frames - given) % 4].view(1, -1)
    context = model.encode_context(torch.zeros(1, 1, TOY_MODEL_CONFIG.text_dim))
    grid = token_grid(model.config, LATENT_HW)
    stand_in = script.TeacherForcingContext(
        frames, chunk, grid, model.config.num_heads, model.config.head_dim, given
    )
    video = torch.cat([clean[:, : frames - chunk], noisy], dim=1)
    times = torch.cat([torch.zeros(1, frames - chunk), noisy_times], dim=1)
    with torch.no_grad():
        attention = script.block_causal_attention(frames, chunk, grid[0] * grid[1], given)
        taught = script.teacher_forced_flow(model, video, times, context, stand_in, attention, frames - chunk)
        cache = model.new_cache(TOY_CACHE, 1, LATENT_HW)
        walked = []
        for start in range(0, frames, chunk):
            part = slice(start, start + chunk)
            if start >= given:
                generated = slice(start - given, start - given + chunk)
                walked.append(
                    model(
                        noisy[:, generated],
                        noisy_times[:, generated],
                        context,
                        cache=cache,
                        start_frame=start,
                    )
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


def test_toy_videos_start_from_the_world_scene_of_the_seed() -> None:
    toy = get_preset("toy")
    first = components.make_initial_latents(toy, seed=7, batch_size=2)
    assert first is not None and torch.equal(first, world_latents(7, TOY_GIVEN_FRAMES, 2))
    assert not torch.equal(first, components.make_initial_latents(toy, seed=8, batch_size=2))
    assert components.make_initial_latents(PRESETS["tiny"], seed=7) is None
    with pytest.raises(
        ValueError, match=r"initial_latents must be one of \(None, 'toy-world'\), got 'webcam'"
    ):
        dataclasses.replace(toy, initial_latents="webcam")


@needs_video
def test_memrope_generate_model_toy_continues_the_world_scene_of_its_seed(tmp_path: Path) -> None:
    latents_path = tmp_path / "toy.safetensors"
    args = [
        "generate",
        "--model",
        "toy",
        "--prompt",
        "shapes",
        "--num-frames",
        "6",
        "--seed",
        "3",
        "--no-progress",
    ]
    assert main([*args, "--output", str(tmp_path / "toy.mp4"), "--save-latents", str(latents_path)]) == 0
    latents = load_file(latents_path)["latents"]
    assert latents.shape == (1, 6, LATENT_CHANNELS, *LATENT_HW)
    assert torch.equal(latents[:, :TOY_GIVEN_FRAMES], world_latents(3, TOY_GIVEN_FRAMES, 1))
    assert not torch.equal(latents[:, 3:], world_latents(3, 6, 1)[:, 3:])  # the rest is the model's


def test_the_toy_report_records_its_sampler_settings(tmp_path: Path) -> None:
    output = tmp_path / "toy.mp4"
    args = ["generate", "--model", "toy", "--num-frames", "4", "--no-progress", "--output", str(output)]
    assert main(args) == 0
    signature = json.loads(output.with_name("toy.mp4.json").read_text())["signature"]
    preset = get_preset("toy")
    assert signature["shift"] == preset.shift == 1.0
    assert signature["context_noise"] == preset.context_noise == TOY_CONTEXT_NOISE
    assert signature["noised_context"] is True
    assert "warp_denoising_step" not in signature  # the official default, like every official setting


def test_the_unconditional_toy_needs_no_prompt_and_ignores_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--model", "toy", "--num-frames", "4", "--seed", "2", "--no-progress"]
    bare = [*args, "--output", str(tmp_path / "bare.mp4"), "--save-latents", str(tmp_path / "bare.st")]
    assert main(bare) == 0
    assert "ignores prompts (it is unconditional): making one video without one" in capsys.readouterr().err
    report = json.loads((tmp_path / "bare.mp4.json").read_text())
    assert report["prompt"] == ""
    prompted = [*args, "--prompt", "a red fox", "--output", str(tmp_path / "fox.mp4")]
    assert main([*prompted, "--save-latents", str(tmp_path / "fox.st")]) == 0
    assert torch.equal(load_file(tmp_path / "bare.st")["latents"], load_file(tmp_path / "fox.st")["latents"])
    assert not get_preset("tiny").unconditional  # a conditional model still asks for a prompt


def test_the_motion_benchmark_scores_the_worlds_own_step_as_the_worlds_step() -> None:
    motion = toy_benchmark("toy_motion")
    truth = measure_frames(latents_to_frames(world_latents(0, 6, 4)))
    step = motion.step_along_world(truth.centroids[:, 4], truth.centroids[:, 3], truth, 4)
    world_step = wrapped_offset(truth.centroids[:, 4], truth.centroids[:, 3]).norm(dim=-1)
    present = ~torch.isnan(step)
    assert int(present.sum()) >= 8
    assert torch.allclose(step[present], world_step[present])
    frozen = motion.step_along_world(truth.centroids[:, 3], truth.centroids[:, 3], truth, 4)
    assert torch.all(frozen[present] == 0)
    backwards = motion.step_along_world(truth.centroids[:, 3], truth.centroids[:, 4], truth, 4)
    assert torch.allclose(backwards[present], -world_step[present])


def test_the_motion_benchmark_runs_the_shipped_model() -> None:
    result = toy_benchmark("toy_motion").measure_motion(
        None, batch=2, frames=TOY_GIVEN_FRAMES + 2, seed=0, noise_seed=1
    )
    rows = result["frames"]
    assert [row["frame"] for row in rows] == [TOY_GIVEN_FRAMES, TOY_GIVEN_FRAMES + 1]
    for row in rows:
        assert 0.9 <= row["world_step"] <= 1.1  # 1 pixel per latent frame
        assert 0.0 <= row["on_track"] <= row["held"] <= 1.0
        assert math.isfinite(row["one_step"])


def test_the_attention_benchmark_places_each_share_at_its_frame_and_offset() -> None:
    statistics = toy_benchmark("toy_attention").head_statistics
    height, width = 4, 5
    tokens = height * width
    frames = 3  # two context frames and the frame being drawn
    weights = torch.zeros(2, tokens, frames * tokens)
    for row in range(height):
        for col in range(width):
            source = row * width + max(col - 1, 0)  # the previous frame's token to its left
            weights[:, row * width + col, (frames - 2) * tokens + source] = 1.0
    result = statistics(weights, (height, width))
    assert result["frames"] == [0.0, 1.0, 0.0]
    # the first column's queries have no left neighbour: they read their own token
    assert result["previous_3x3"] == [[0.0, 0.0, 0.0], [0.8, 0.2, 0.0], [0.0, 0.0, 0.0]]
    assert result["entropy"] == pytest.approx(0.0, abs=1e-6)
    uniform = statistics(torch.full((1, tokens, frames * tokens), 1.0 / (frames * tokens)), (height, width))
    assert uniform["entropy"] == pytest.approx(uniform["uniform"])
    assert uniform["frames"] == pytest.approx([1 / 3] * 3, abs=1e-3)


def test_the_attention_benchmark_reads_the_first_denoising_call_of_the_shipped_model() -> None:
    result = toy_benchmark("toy_attention").measure_attention(
        None, batch=1, frame=TOY_GIVEN_FRAMES + 1, seed=0, noise_seed=1
    )
    layers = result["layers"]
    config = get_preset("toy").model_config
    assert len(layers) == config.num_layers and all(len(heads) == config.num_heads for heads in layers)
    for heads in layers:
        for head in heads:
            assert len(head["frames"]) == TOY_GIVEN_FRAMES + 2  # the context and the frame being drawn
            assert sum(head["frames"]) == pytest.approx(1.0, abs=1e-2)
            assert 0.0 <= head["entropy"] <= head["uniform"] + 1e-4
            assert sum(map(sum, head["previous_3x3"])) <= head["frames"][-2] + 1e-2


# ------------------------------------------------------------------------------------ a short run
@pytest.fixture(scope="module")
def toy_run() -> tuple[torch.Tensor, FrameMeasure]:
    """The README's main job over the trained length (12 latent frames, 45 video frames), 4 videos:
    decoded native frames ``[4, 45, 3, 32, 48]`` and the world's measure of each latent frame."""
    preset = get_preset("toy")
    model = components.load_model(preset, device="cpu")
    pipeline = components.make_pipeline(preset, model, decoder=ToyDecoder())
    batch = 4
    text = components.load_text_encoder(preset).encode(["coloured shapes drifting"] * batch)
    first = components.make_initial_latents(preset, seed=0, batch_size=batch)
    chunks = list(pipeline.stream(text, num_frames=TOY_LATENT_FRAMES, seed=0, initial_latents=first))
    video = native_frames(torch.cat([chunk.frames for chunk in chunks if chunk.frames is not None], dim=1))
    return video, measure_frames(latents_to_frames(torch.cat([chunk.latents for chunk in chunks], dim=1)))


def _objects_held(measure: FrameMeasure, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per video and colour ``[B, 6]``: the first frame's objects still, at ``frame``, a compact blob of
    their colour with half to twice their first-frame pixels; and the first frame's objects (the
    definitions of ``benchmarks/toy_drift.py``, so the tests and the README's tables count alike)."""
    drift = toy_benchmark("toy_drift")
    first = drift.first_frame_objects(measure.counts[:, 0], measure.fill[:, 0])
    return drift.objects_held(
        first, measure.counts[:, 0], measure.counts[:, frame], measure.fill[:, frame]
    ), first


def test_a_short_toy_run_moves_smoothly_over_its_background_not_noise(
    toy_run: tuple[torch.Tensor, FrameMeasure],
) -> None:
    video, measure = toy_run
    steps = (video[:, 1:] - video[:, :-1]).abs().mean(dim=(2, 3, 4))
    noise = noise_frames(video.shape[1])
    noise_steps = (noise[:, 1:] - noise[:, :-1]).abs().mean(dim=(2, 3, 4))
    assert float(steps.max()) < 0.05 < float(noise_steps.min())
    assert float(measure.background_error.max()) < 0.1  # uniform noise scores ~0.5
    assert float(measure.object_fraction[:, 3:].max()) < 0.25  # no smear of object colours
    held, first = _objects_held(measure, TOY_GIVEN_FRAMES)  # the first frame the model draws
    assert int(first.sum()) >= 8 and float(held.sum() / first.sum()) >= 0.75
    moved = wrapped_offset(measure.centroids[:, TOY_GIVEN_FRAMES], measure.centroids[:, 0]).norm(dim=-1)[held]
    assert float(moved.min()) > 0.5 and float(moved.max()) < 6.0  # about 1 px per latent frame
    truth = measure_frames(latents_to_frames(world_latents(0, TOY_GIVEN_FRAMES + 1, 4)))
    off_track = wrapped_offset(measure.centroids[:, TOY_GIVEN_FRAMES], truth.centroids[:, TOY_GIVEN_FRAMES])
    off_track = off_track.norm(dim=-1)
    assert float(off_track[held].max()) < 1.5  # where the world itself moves them


def test_the_toy_models_objects_do_not_fade_over_the_trained_length(
    toy_run: tuple[torch.Tensor, FrameMeasure],
) -> None:
    """Its objects stay blobs of palette colour over a clean background (an MSE-trained model blurred
    them into the background within three frames: none held at the trained length)."""
    _, measure = toy_run
    last = TOY_LATENT_FRAMES - 1
    held, first = _objects_held(measure, last)
    assert float(held.sum() / first.sum()) >= 0.25
    assert float(measure.object_fraction[:, last].mean()) >= 0.5 * float(measure.object_fraction[:, 0].mean())
    assert float(measure.background_error.max()) < 0.07


def test_the_toy_model_holds_and_moves_its_objects_for_the_trained_length(
    toy_run: tuple[torch.Tensor, FrameMeasure],
) -> None:
    """At the end of the trained length, 3 in 4 of the first frame's objects are still whole and within
    2 pixels of where the world's current has carried them (the bouncing world's model: under a third)."""
    _, measure = toy_run
    last = TOY_LATENT_FRAMES - 1
    held, first = _objects_held(measure, last)
    truth = measure_frames(latents_to_frames(world_latents(0, TOY_LATENT_FRAMES, 4)))
    off_track = wrapped_offset(measure.centroids[:, last], truth.centroids[:, last]).norm(dim=-1)
    assert float((held & (off_track < 2.0)).sum() / first.sum()) >= 0.75
