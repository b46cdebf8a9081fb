"""Device plans, model placement and offloading (memrope.devices), without any GPU.

Placement with real compute runs over two CPU "devices"; placement over devices that really differ
uses ``("cpu", "meta")``; ``auto`` decisions use an injected free-memory probe.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from memrope.config import MemRoPEConfig
from memrope.devices import (
    DevicePlan,
    NotEnoughMemoryError,
    StaticMemoryProbe,
    offloaded,
    place_model,
    plan_devices,
)
from memrope.models.wan import CausalWanModel
from memrope.pipeline import CausalInferencePipeline
from memrope.presets import TINY_MODEL_CONFIG, MemoryEstimate, get_preset, tiny_model, tiny_text_encoder

GIB = 1024**3
LATENT_HW = (16, 24)
CACHE = MemRoPEConfig()  # 12 frames: sink 3, memory 2, recent 4, chunk 3
CHUNKS = 6  # the cache is full from chunk 4 on: the first two evictions are covered
FOUR_LAYERS = dataclasses.replace(TINY_MODEL_CONFIG, num_layers=4)
NO_GPU = StaticMemoryProbe({})

# Needs of a made-up run (GiB): one GPU 13, offloaded 12; split over 2: 7 + 9, VAE offloaded 7 + 8.
RUN = MemoryEstimate(
    weights=4 * GIB, cache=4 * GIB, activations=1 * GIB, text_encoder=6 * GIB, vae=3 * GIB, overhead=1 * GIB
)


def _gpus(*free_gib: float) -> StaticMemoryProbe:
    return StaticMemoryProbe({f"cuda:{index}": int(free * GIB) for index, free in enumerate(free_gib)})


def _expected_device(plan: DevicePlan, tensor_name: str) -> torch.device:
    """Device of the longest device-map prefix of ``tensor_name``."""
    owners = [name for name in plan.device_map if tensor_name.startswith(name + ".")]
    return plan.device_map[max(owners, key=len)]


# ------------------------------------------------------------ (a) split over two CPUs computes the same
def _run_chunks(model: CausalWanModel, calls_per_chunk: int = 2) -> Iterator[torch.Tensor]:
    """Flow predictions of several chunks (each called ``calls_per_chunk`` times, as a pipeline does)."""
    generator = torch.Generator().manual_seed(0)
    context = model.encode_context(tiny_text_encoder().encode(["a red fox running through snow"]))
    cache = model.new_cache(CACHE, 1, LATENT_HW)
    frames = CACHE.chunk_frames
    for chunk in range(CHUNKS):
        for step in range(calls_per_chunk):
            latents = torch.randn(1, frames, 16, *LATENT_HW, generator=generator)
            timesteps = torch.full((1, frames), 1000.0 - 250.0 * step)
            yield model(latents, timesteps, context, cache=cache, start_frame=chunk * frames)


@torch.no_grad()
def test_split_over_two_cpu_devices_gives_identical_outputs() -> None:
    plan = plan_devices("split", ("cpu", "cpu"), num_layers=TINY_MODEL_CONFIG.num_layers)
    placed = place_model(tiny_model(), plan)
    for reference, output in zip(_run_chunks(tiny_model()), _run_chunks(placed), strict=True):
        assert torch.equal(reference, output)


@torch.no_grad()
def test_split_model_generates_the_same_video_through_the_pipeline() -> None:
    prompt = tiny_text_encoder().encode(["a lighthouse at dusk"])
    plan = plan_devices("split", ("cpu", "cpu"), num_layers=TINY_MODEL_CONFIG.num_layers, split_at=1)
    videos = [
        CausalInferencePipeline(model, CACHE).generate(prompt, num_frames=9, seed=5, latent_hw=LATENT_HW)
        for model in (tiny_model(), place_model(tiny_model(), plan))
    ]
    assert torch.equal(videos[0], videos[1])


# ------------------------------------------------------------ (b) placement over devices that differ
@pytest.mark.parametrize(
    "devices, split_at, block_devices",
    [
        (("cpu", "meta"), None, ("cpu", "cpu", "meta", "meta")),
        (("cpu", "meta"), 3, ("cpu", "cpu", "cpu", "meta")),
        (("meta", "cpu"), 1, ("meta", "cpu", "cpu", "cpu")),
        (("cpu", "meta", "cpu"), None, ("cpu", "meta", "cpu", "cpu")),
        (("meta", "cpu", "meta"), (2, 3), ("meta", "meta", "cpu", "meta")),
    ],
)
def test_every_tensor_and_cache_buffer_sits_on_its_planned_device(
    devices: tuple[str, ...], split_at: int | tuple[int, ...] | None, block_devices: tuple[str, ...]
) -> None:
    plan = plan_devices("split", devices, num_layers=4, split_at=split_at)
    assert [str(d) for d in plan.block_devices] == list(block_devices)
    assert plan.primary_device == torch.device(devices[0]) and plan.output_device == torch.device(devices[-1])
    model = place_model(CausalWanModel(FOUR_LAYERS), plan)
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in named:
        assert tensor.device == _expected_device(plan, name), name
    cache = model.new_cache(CACHE, 2, LATENT_HW)
    for layer, device in enumerate(plan.block_devices):
        state = cache.layers[layer]
        buffers = [state.keys, state.values] + ([state.keys_roped] if state.keys_roped is not None else [])
        assert cache.layer_devices[layer] == device
        assert all(buffer.device == device for buffer in buffers), layer


def test_the_pipeline_keeps_each_layer_cache_beside_its_block() -> None:
    plan = plan_devices("split", ("cpu", "meta"), num_layers=4)
    model = place_model(CausalWanModel(FOUR_LAYERS), plan)
    pipeline = CausalInferencePipeline(model, CACHE, device=plan.primary_device)
    prompt = torch.zeros(1, 3, FOUR_LAYERS.text_dim)
    pipeline.stream(prompt, num_frames=6, seed=0, latent_hw=LATENT_HW)  # sets the run up, generates nothing
    assert pipeline.cache is not None
    assert pipeline.cache.layer_devices == list(plan.block_devices)
    assert [state.keys.device for state in pipeline.cache.layers] == list(plan.block_devices)


def test_official_split_places_blocks_0_to_14_and_embeddings_first() -> None:
    plan = plan_devices("split", ("cpu", "meta"), num_layers=30)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert plan.device_map["blocks.14"] == cpu and plan.device_map["blocks.15"] == meta
    assert [
        plan.device_map[n] for n in ("patch_embedding", "text_embedding", "time_embedding", "time_projection")
    ] == [cpu] * 4
    assert plan.device_map["head"] == meta and plan.vae_device == meta and plan.text_encoder_device == cpu
    assert list(plan.device_map)[:5] == [
        "patch_embedding",
        "text_embedding",
        "time_embedding",
        "time_projection",
        "blocks.0",
    ]
    assert list(plan.device_map)[-1] == "head" and len(plan.device_map) == 4 + 30 + 1
    assert "blocks.0-14" in plan.describe() and "blocks.15-29, head, VAE" in plan.describe()


def test_place_model_empty_materialises_a_meta_model_on_the_planned_devices() -> None:
    with torch.device("meta"):
        model = CausalWanModel(FOUR_LAYERS)
    plan = plan_devices("split", ("cpu", "meta"), num_layers=4, split_at=2)
    place_model(model, plan, empty=True)
    for name, tensor in model.named_parameters():
        assert tensor.device == _expected_device(plan, name), name


def test_place_model_empty_then_loading_weights_gives_the_model() -> None:
    with torch.device("meta"):
        model = CausalWanModel(TINY_MODEL_CONFIG)
    place_model(model, plan_devices("split", ("cpu", "cpu"), num_layers=2), empty=True)
    reference = tiny_model().state_dict()
    model.load_state_dict(reference)
    assert all(torch.equal(tensor, reference[name]) for name, tensor in model.state_dict().items())


def test_device_map_is_in_accelerates_format() -> None:
    accelerate_utils = pytest.importorskip("accelerate.utils")
    plan = plan_devices("split", ("cpu", "meta"), num_layers=4)
    accelerate_utils.check_device_map(CausalWanModel(FOUR_LAYERS), dict(plan.device_map))


def test_place_model_moves_modules_without_hooks() -> None:
    model = place_model(tiny_model(), plan_devices("split", ("cpu", "cpu"), num_layers=2))
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


# ------------------------------------------------------------ (c) auto decisions
@pytest.mark.parametrize(
    "free_gib, mode, devices, offload_vae",
    [
        ((16,), "single", ("cuda:0",), False),
        ((12.5,), "single", ("cuda:0",), True),  # only fits with the text encoder and VAE offloaded
        ((4, 16), "single", ("cuda:1",), False),  # the GPU with the most free memory
        ((10, 10), "split", ("cuda:0", "cuda:1"), False),
        ((7.5, 8.5), "split", ("cuda:0", "cuda:1"), True),  # the second GPU needs the VAE offloaded
        ((2, 10, 9), "split", ("cuda:1", "cuda:2"), False),  # the two GPUs with the most free memory
    ],
)
def test_auto_picks_the_first_layout_that_fits(
    free_gib: tuple[float, ...], mode: str, devices: tuple[str, ...], offload_vae: bool
) -> None:
    plan = plan_devices(num_layers=30, memory=RUN, probe=_gpus(*free_gib))
    assert (plan.mode, [str(d) for d in plan.devices], plan.offload_vae) == (mode, list(devices), offload_vae)
    assert plan.needed_bytes is not None
    assert all(
        need <= free_gib[d.index] * GIB for d, need in zip(plan.devices, plan.needed_bytes, strict=True)
    )


def test_auto_needs_for_each_layout() -> None:
    single = plan_devices(num_layers=30, memory=RUN, probe=_gpus(16))
    offloaded_single = plan_devices(num_layers=30, memory=RUN, probe=_gpus(16), offload=True)
    split = plan_devices("split", ("cuda:0", "cuda:1"), num_layers=30, memory=RUN, probe=_gpus(1, 1))
    assert single.needed_bytes == (13 * GIB,)
    assert offloaded_single.needed_bytes == (12 * GIB,) and offloaded_single.offload_text_encoder
    assert split.needed_bytes == (7 * GIB, 9 * GIB) and split.offload_text_encoder and not split.offload_vae


def test_auto_spreads_over_three_gpus_when_two_are_not_enough() -> None:
    light_text = dataclasses.replace(
        RUN, text_encoder=2 * GIB
    )  # splits: 2 GPUs 6 + 9, 3 GPUs 4.67 + 4.67 + 7.67
    plan = plan_devices(num_layers=30, memory=light_text, probe=_gpus(5, 5, 8))
    assert plan.mode == "split" and [str(d) for d in plan.devices] == ["cuda:0", "cuda:1", "cuda:2"]
    assert plan.block_devices.count(torch.device("cuda:0")) == 10 and plan.output_device == torch.device(
        "cuda:2"
    )


def test_auto_honours_split_at_and_forced_offload() -> None:
    plan = plan_devices(num_layers=30, memory=RUN, probe=_gpus(10, 10), split_at=10)
    assert plan.mode == "split" and plan.block_devices.count(torch.device("cuda:0")) == 10
    forced = plan_devices(num_layers=30, memory=RUN, probe=_gpus(80), offload=True)
    assert forced.mode == "single" and forced.offload_vae and forced.offload_text_encoder


def test_auto_reports_needed_and_free_memory_when_nothing_fits() -> None:
    needed = r"1 GPU: 13\.0 GiB; .* offloaded: 12\.0 GiB; 2 GPUs: 7\.0 GiB \+ 9\.0 GiB"
    with pytest.raises(NotEnoughMemoryError, match=needed + r".*Free: cuda:0 5\.0 GiB, cuda:1 6\.0 GiB"):
        plan_devices(num_layers=30, memory=RUN, probe=_gpus(5, 6))


def test_auto_uses_the_cpu_without_gpus_and_a_real_estimate_with_them() -> None:
    cpu_plan = plan_devices(num_layers=30, memory=RUN, probe=NO_GPU)
    assert (cpu_plan.mode, cpu_plan.devices, cpu_plan.offload_vae) == (
        "single",
        (torch.device("cpu"),),
        False,
    )
    estimate = get_preset("self-forcing-30s").memory_estimate(torch.bfloat16)
    assert plan_devices(num_layers=30, memory=estimate, probe=_gpus(80)).mode == "single"
    with pytest.raises(NotEnoughMemoryError):
        plan_devices(num_layers=30, memory=estimate, probe=_gpus(8, 8))


def test_plan_to_dict_is_json_and_describe_is_readable() -> None:
    plan = plan_devices(num_layers=30, memory=RUN, probe=_gpus(12.5))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["mode"] == "single" and data["devices"] == ["cuda:0"] and data["offload_vae"] is True
    assert data["device_map"]["blocks.29"] == "cuda:0" and data["needed_bytes"] == [12 * GIB]
    text = plan.describe()
    assert text.splitlines()[0] == "single device: cuda:0"
    assert "blocks.0-29, head (~12.0 GiB)" in text and "VAE: waits on the CPU, moved to cuda:0" in text


# ------------------------------------------------------------ the text encoder on the CPU
def test_the_text_encoder_on_the_cpu_takes_nothing_on_the_gpu() -> None:
    gpu = plan_devices("single", ("cuda:0",), num_layers=30, memory=RUN, probe=_gpus(16))
    cpu = plan_devices("single", ("cuda:0",), num_layers=30, memory=RUN, probe=_gpus(16), text_encoder="cpu")
    assert gpu.text_encoder_device == torch.device("cuda:0") and gpu.needed_bytes == (13 * GIB,)
    assert cpu.text_encoder_device == torch.device("cpu") and not cpu.offload_text_encoder
    large = dataclasses.replace(RUN, text_encoder=20 * GIB)  # a text encoder larger than the generation
    assert plan_devices("single", ("cuda:0",), num_layers=30, memory=large, probe=_gpus(16)).needed_bytes == (
        21 * GIB,
    )
    on_cpu = plan_devices(
        "split", ("cuda:0", "cuda:1"), num_layers=30, memory=large, probe=_gpus(16, 16), text_encoder="cpu"
    )
    assert on_cpu.needed_bytes == (6 * GIB, 9 * GIB) and not on_cpu.offload_text_encoder  # 7 + 9 with it
    assert "text encoder: runs on the CPU (nothing of it on a GPU)" in on_cpu.describe()


@pytest.mark.parametrize(
    "free_gib, text_device",
    [((8,), "cpu"), ((7.5,), "cpu"), ((16,), "cuda:0")],  # umT5's phase here is 6 + 1 GiB
)
def test_text_encoder_auto_runs_it_on_the_gpu_only_where_its_phase_fits(
    free_gib: tuple[float, ...], text_device: str
) -> None:
    heavy = dataclasses.replace(RUN, text_encoder=10 * GIB)  # phase 11 GiB, generation 13 GiB
    plan = plan_devices(
        "single", ("cuda:0",), num_layers=30, memory=heavy, probe=_gpus(*free_gib), text_encoder="auto"
    )
    expected = "cpu" if free_gib[0] < 11 else text_device
    assert str(plan.text_encoder_device) == expected
    assert (
        plan_devices("single", ("cpu",), num_layers=30, text_encoder="auto").text_encoder_device.type == "cpu"
    )
    # without an estimate there is nothing to decide with: the GPU, as before
    assert plan_devices(
        "single", ("cuda:0",), num_layers=30, probe=_gpus(1), text_encoder="auto"
    ).text_encoder_device == torch.device("cuda:0")


def test_auto_placement_tries_one_gpu_with_the_text_encoder_on_the_cpu_before_two_gpus() -> None:
    heavy = dataclasses.replace(RUN, text_encoder=12 * GIB)  # one GPU: 13 GiB, offloaded 12; umT5 phase 13
    both = plan_devices(num_layers=30, memory=heavy, probe=_gpus(12.5, 12.5), text_encoder="auto")
    assert both.mode == "single" and both.text_encoder_device == torch.device("cpu") and both.offload_vae
    with pytest.raises(NotEnoughMemoryError):  # kept on a GPU, umT5's 13 GiB phase fits nowhere
        plan_devices(num_layers=30, memory=heavy, probe=_gpus(12.5, 12.5))
    with pytest.raises(NotEnoughMemoryError, match=r"1 GPU, text encoder on the CPU: 13\.0 GiB"):
        plan_devices(num_layers=30, memory=heavy, probe=_gpus(5), text_encoder="auto")


def test_a_real_estimate_with_the_text_encoder_on_the_cpu_fits_a_12_gib_gpu_with_an_8_bit_cache() -> None:
    preset = get_preset("self-forcing-60s")
    estimate = preset.memory_estimate(kv_dtype="fp8")
    plan = plan_devices(num_layers=30, memory=estimate, probe=_gpus(11.5), text_encoder="auto")
    assert plan.mode == "single" and plan.text_encoder_device.type == "cpu" and not plan.offload_vae
    with pytest.raises(NotEnoughMemoryError):
        plan_devices(num_layers=30, memory=preset.memory_estimate(), probe=_gpus(11.5), text_encoder="auto")


# ------------------------------------------------------------ (d) bad input
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"mode": "dual"}, ValueError, r"mode must be one of \('auto', 'single', 'split'\)"),
        ({"text_encoder": "tpu"}, ValueError, r"text_encoder must be one of \('auto', 'gpu', 'cpu'\)"),
        ({"mode": "single", "devices": ["cpu", "cpu"]}, ValueError, r"mode='single' takes exactly 1 device"),
        ({"mode": "split", "devices": ["cpu"]}, ValueError, r"mode='split' takes 2 to num_layers=30 devices"),
        (
            {"mode": "split", "num_layers": 2, "devices": ["cpu"] * 3},
            ValueError,
            r"2 to num_layers=2 devices",
        ),
        ({"mode": "split"}, ValueError, r"mode='split' needs at least 2 devices; 0 CUDA"),
        (
            {"mode": "split", "devices": ["cpu", "cpu"], "split_at": 0},
            ValueError,
            r"split_at must be 1 .* in 1\.\.29",
        ),
        ({"mode": "split", "devices": ["cpu", "cpu"], "split_at": 30}, ValueError, r"split_at must be"),
        (
            {"mode": "split", "devices": ["cpu"] * 3, "split_at": 5},
            ValueError,
            r"split_at as an int .* exactly 2",
        ),
        ({"mode": "split", "devices": ["cpu"] * 3, "split_at": (9, 9)}, ValueError, r"strictly increasing"),
        ({"mode": "split", "devices": ["cpu"] * 2, "split_at": "5"}, TypeError, r"split_at must be an int"),
        ({"mode": "single", "split_at": 3}, ValueError, r"split_at only applies to mode='split'"),
        (
            {"mode": "single", "devices": ["cuda:1"]},
            ValueError,
            r"cuda:1 is not available here \(visible CUDA devices: none\)",
        ),
        ({"mode": "single", "devices": ["gpu0"]}, ValueError, r"unknown device 'gpu0'"),
        ({"mode": "single", "devices": "cpu"}, TypeError, r"devices must be a sequence"),
        ({"mode": "single", "devices": [-1]}, ValueError, r"CUDA index must be >= 0"),
        ({"num_layers": 0}, ValueError, r"num_layers must be an int >= 1"),
        ({"offload": "yes"}, TypeError, r"offload must be True or False"),
        ({"mode": "auto", "devices": ["cpu"]}, ValueError, r"mode='auto' chooses among CUDA devices"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(
    kwargs: dict[str, object], error: type, message: str
) -> None:
    arguments: dict[str, object] = {"num_layers": 30, "probe": NO_GPU, **kwargs}
    with pytest.raises(error, match=message):
        plan_devices(**arguments)  # type: ignore[arg-type]


def test_auto_with_gpus_needs_a_memory_estimate_and_checks_device_availability() -> None:
    with pytest.raises(ValueError, match=r"needs memory="):
        plan_devices(num_layers=30, probe=_gpus(80))
    with pytest.raises(
        ValueError, match=r"cuda:2 is not available here \(visible CUDA devices: cuda:0, cuda:1\)"
    ):
        plan_devices("split", ["cuda:0", "cuda:2"], num_layers=30, probe=_gpus(80, 80))


def test_place_model_rejects_a_plan_for_another_block_count() -> None:
    with pytest.raises(ValueError, match=r"modules the model does not have: blocks\.2"):
        place_model(tiny_model(), plan_devices("split", ("cpu", "cpu"), num_layers=3))
    with pytest.raises(ValueError, match=r"does not place these model tensors: blocks\.1\."):
        place_model(tiny_model(), plan_devices("single", ("cpu",), num_layers=1))
    with pytest.raises(TypeError, match=r"plan must be a DevicePlan"):
        place_model(tiny_model(), {"head": "cpu"})  # type: ignore[arg-type]


def test_device_plan_validates_its_fields() -> None:
    cpu, meta = torch.device("cpu"), torch.device("meta")
    with pytest.raises(ValueError, match=r"mode must be one of \('single', 'split'\)"):
        DevicePlan("auto", (cpu,), {}, cpu, cpu, False, False)
    with pytest.raises(ValueError, match=r"device_map must place at least one module"):
        DevicePlan("single", (cpu,), {}, cpu, cpu, False, False)
    with pytest.raises(ValueError, match=r"device_map uses devices \['meta'\]"):
        DevicePlan("single", (cpu,), {"head": meta}, cpu, cpu, False, False)
    with pytest.raises(ValueError, match=r"needed_bytes must hold one number per device \(1\)"):
        DevicePlan("single", (cpu,), {"head": cpu}, cpu, cpu, False, False, needed_bytes=(1, 2))


# ------------------------------------------------------------ (e) offloading
class _Recorder(nn.Module):
    """A module that records the devices it is moved to."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.moves: list[str] = []

    def to(self, device: torch.device) -> _Recorder:  # type: ignore[override]
        self.moves.append(str(device))
        return super().to(device)


def test_offloaded_visits_the_device_and_returns_home() -> None:
    module = _Recorder()
    with offloaded(module, "meta") as inside:
        assert inside is module and module.weight.device.type == "meta"
        module.weight = nn.Parameter(torch.ones(2))  # meta tensors cannot be copied back: give it data
    assert module.moves == ["meta", "cpu"] and module.weight.device.type == "cpu"


def test_offloaded_returns_home_on_error_and_does_nothing_when_disabled() -> None:
    module = _Recorder()
    with pytest.raises(KeyError), offloaded(module, "cpu", home="cpu"):
        raise KeyError("boom")
    assert module.moves == ["cpu", "cpu"]
    with offloaded(module, "meta", enabled=False):
        assert module.weight.device.type == "cpu"
    assert module.moves == ["cpu", "cpu"]


def test_single_plan_offloads_only_off_the_cpu() -> None:
    assert not plan_devices("single", ["cpu"], num_layers=2, offload=True).offload_vae
    gpu = plan_devices("single", ["cuda:0"], num_layers=2, offload=True, probe=_gpus(1))
    assert gpu.offload_vae and gpu.offload_text_encoder and gpu.vae_device == torch.device("cuda:0")


# ------------------------------------------------------------ (f) placeable modules declared by the model
class _OtherFamily(nn.Module):
    """A made-up model family with its own module names: one input, three layers, two outputs."""

    _placeable_modules = ("embed", "layers.*", "norm", "unembed")

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(2, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.norm = nn.LayerNorm(4)
        self.unembed = nn.Linear(4, 2)


def test_the_plan_places_the_modules_the_model_class_declares() -> None:
    from memrope.devices import ModuleLayout, module_layout

    assert (
        module_layout(CausalWanModel)
        == module_layout(tiny_model())
        == module_layout()
        == ModuleLayout(
            ("patch_embedding", "text_embedding", "time_embedding", "time_projection"), "blocks", ("head",)
        )
    )
    model = _OtherFamily()
    plan = plan_devices("split", ("cpu", "meta"), model=model, split_at=2)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert dict(plan.device_map) == {
        "embed": cpu,
        "layers.0": cpu,
        "layers.1": cpu,
        "layers.2": meta,
        "norm": meta,
        "unembed": meta,
    }
    assert (plan.primary_device, plan.output_device, plan.block_devices) == (cpu, meta, (cpu, cpu, meta))
    assert "cpu: embed, layers.0-1" in plan.describe() and "meta: layers.2, norm, unembed" in plan.describe()
    place_model(model, plan)
    assert model.layers[1].weight.device == cpu and model.unembed.weight.device == meta
    assert plan_devices("single", ("cpu",), model=_OtherFamily, num_layers=3).block_devices == (cpu,) * 3


def test_models_without_a_valid_declaration_are_refused() -> None:
    from memrope.devices import module_layout

    with pytest.raises(ValueError, match=r"Linear declares no _placeable_modules: add the class attribute"):
        module_layout(nn.Linear(2, 2))
    for declared in (
        (),
        ("embed", "head"),
        ("a.*", "b.*"),
        ("embed", "embed", "layers.*"),
        (".*",),
        "layers.*",
    ):
        bad = type("Bad", (nn.Module,), {"_placeable_modules": declared})
        with pytest.raises(ValueError, match=r"Bad\._placeable_modules must be distinct module names"):
            module_layout(bad)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        module_layout(int)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_layers is needed .* unless model= is a model instance"):
        plan_devices("single", ("cpu",), model=_OtherFamily)
    assert (
        len(plan_devices("single", ("cpu",), model=tiny_model()).block_devices)
        == TINY_MODEL_CONFIG.num_layers
    )


def test_the_old_module_name_constants_still_work_with_a_deprecation_warning() -> None:
    from memrope import devices

    with pytest.warns(DeprecationWarning, match=r"EMBEDDING_MODULES is deprecated"):
        assert devices.EMBEDDING_MODULES == (
            "patch_embedding",
            "text_embedding",
            "time_embedding",
            "time_projection",
        )
    with pytest.warns(DeprecationWarning, match=r"HEAD_MODULE is deprecated"):
        assert devices.HEAD_MODULE == "head"
    with pytest.raises(AttributeError, match="no attribute 'BLOCK_LIST'"):
        devices.BLOCK_LIST  # noqa: B018
