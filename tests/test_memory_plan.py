"""The memory plan (memrope.memory_plan): weights and cache exact against a model and a cache built on the
``meta`` device at full shape (Wan2.1-1.3B and 14B), the rest consistent with the device planner."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import needs_video, tiny_args

from memrope.cache import MemRoPECache
from memrope.cli import build_parser, main, plan_generate
from memrope.cli.generate_plan import _placement
from memrope.config import MemRoPEConfig
from memrope.devices import StaticMemoryProbe, plan_devices
from memrope.distributed import DistributedEnv
from memrope.errors import CLIError
from memrope.memory_plan import (
    GIB,
    GPU_SIZES_GB,
    KV_DTYPES,
    UMT5_XXL_ENCODER_PARAMS,
    MemoryEstimate,
    cache_bytes,
    cache_supports_kv_dtype,
    estimate_memory,
    kv_dtype_name,
    memory_table,
    parse_kv_dtype,
    plan_memory,
    preset_memory_plan,
    preset_memory_summary,
    smallest_gpu_gb,
    wan_parameter_counts,
)
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.presets import PRESETS, get_preset

WAN_1_3B = WanConfig()
WAN_14B = WanConfig(dim=5120, num_heads=40, num_layers=40, ffn_dim=13824)
LATENT_HW = (60, 104)  # 480x832
FRAME_SHAPE = (30, 52)  # tokens per latent frame after the (1, 2, 2) patch
needs_kv_dtype = pytest.mark.skipif(not cache_supports_kv_dtype(), reason="MemRoPECache has no kv_dtype yet")
EIGHT_BIT = [pytest.param(dtype, marks=needs_kv_dtype, id=name) for name, dtype in KV_DTYPES.items() if dtype]
STORAGES = [pytest.param(None, id="model-dtype"), *EIGHT_BIT]


def _meta_cache(
    config: WanConfig,
    cache_config: MemRoPEConfig,
    kv_dtype: torch.dtype | None,
    key_workspace: str,
    layer_devices: list[str] | None = None,
) -> MemRoPECache:
    storage = {} if kv_dtype is None else {"kv_dtype": kv_dtype}
    return MemRoPECache(
        cache_config,
        num_layers=config.num_layers,
        batch_size=1,
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        frame_shape=FRAME_SHAPE,
        device="meta",
        dtype=torch.bfloat16,
        key_workspace=key_workspace,  # type: ignore[arg-type]
        layer_devices=layer_devices,
        **storage,
    )


def _fill(cache: MemRoPECache, chunks: int) -> None:
    """Run ``chunks`` chunks of meta keys and values through every layer (past the first evictions)."""
    frames = cache.config.chunk_frames
    shape = (cache.batch_size, frames * cache.frame_seqlen, cache.num_heads, cache.head_dim)
    for chunk in range(chunks):
        for layer in range(cache.num_layers):
            tensor = torch.empty(shape, device="meta", dtype=cache.dtype)
            cache.update(tensor, tensor, layer=layer, start_frame=chunk * frames)


@pytest.mark.parametrize("config", [WAN_1_3B, WAN_14B], ids=["1.3B", "14B"])
def test_weights_equal_the_parameters_of_the_model_built_on_meta(config: WanConfig) -> None:
    with torch.device("meta"):
        model = CausalWanModel(config).to(torch.bfloat16)
    measured = sum(p.numel() * p.element_size() for p in model.parameters())
    inputs, per_block, outputs = wan_parameter_counts(config)
    assert (inputs + config.num_layers * per_block + outputs) * 2 == measured
    estimate = estimate_memory(config, MemRoPEConfig(), LATENT_HW, dtype=torch.bfloat16)
    assert estimate.weights == measured
    assert estimate.split is not None
    blocks = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters())
    assert estimate.split.inputs == inputs * 2 and estimate.split.outputs == outputs * 2
    assert blocks == per_block * 2


@pytest.mark.parametrize("config", [WAN_1_3B, WAN_14B], ids=["1.3B", "14B"])
@pytest.mark.parametrize("kv_dtype", STORAGES)
@pytest.mark.parametrize("key_workspace", ["per_layer", "shared"])
def test_cache_bytes_equal_the_resident_bytes_at_full_shape(
    config: WanConfig, kv_dtype: torch.dtype | None, key_workspace: str
) -> None:
    """Every layer at full shape as built; the EMA memories (allocated at the first eviction) are
    checked per layer by the next test."""
    cache_config = MemRoPEConfig(pooling="per_position")  # the larger EMA memories: [B, P, H, D] each
    cache = _meta_cache(config, cache_config, kv_dtype, key_workspace)
    estimate = estimate_memory(
        config, cache_config, LATENT_HW, dtype=torch.bfloat16, kv_dtype=kv_dtype, key_workspace=key_workspace
    )
    assert estimate.cache_detail is not None
    assert estimate.cache - estimate.cache_detail.memories == cache.resident_bytes()


@pytest.mark.parametrize("config", [WAN_1_3B, WAN_14B], ids=["1.3B", "14B"])
@pytest.mark.parametrize("kv_dtype", STORAGES)
@pytest.mark.parametrize("pooling", ["mean", "per_position"])
def test_cache_bytes_once_the_memories_exist_at_full_layer_shape(
    config: WanConfig, kv_dtype: torch.dtype | None, pooling: str
) -> None:
    """Two layers of the full shape driven past the first eviction: every buffer the cache holds then."""
    two_layers = dataclasses.replace(config, num_layers=2)
    cache_config = MemRoPEConfig(pooling=pooling)  # type: ignore[arg-type]
    cache = _meta_cache(two_layers, cache_config, kv_dtype, "shared")
    _fill(cache, 5)  # full from chunk 4 on: the memories exist
    assert all(state.memory for state in cache.layers)
    planned = cache_bytes(
        two_layers, cache_config, LATENT_HW, dtype=torch.bfloat16, kv_dtype=kv_dtype, key_workspace="shared"
    )
    assert planned.total == cache.resident_bytes() and planned.memories > 0


def test_cache_bytes_of_the_growing_full_policy() -> None:
    config = dataclasses.replace(WAN_1_3B, num_layers=2)
    full = MemRoPEConfig(policy="full")
    cache = _meta_cache(config, full, None, "per_layer")
    _fill(cache, 10)  # 30 frames: 12 -> 24 -> 48 frames of capacity
    planned = cache_bytes(config, full, LATENT_HW, dtype=torch.bfloat16, latent_frames=30)
    assert planned.capacity_frames == 48 and planned.total == cache.resident_bytes()


@pytest.mark.parametrize("kv_dtype", STORAGES)
def test_a_cache_split_over_two_devices_holds_its_workspaces_and_tables_once_per_device(
    kv_dtype: torch.dtype | None,
) -> None:
    config = dataclasses.replace(WAN_1_3B, num_layers=4)
    small_hw, small_grid = (8, 8), (4, 4)
    storage = {} if kv_dtype is None else {"kv_dtype": kv_dtype}
    split = MemRoPECache(
        MemRoPEConfig(),
        num_layers=4,
        batch_size=1,
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        frame_shape=small_grid,
        dtype=torch.bfloat16,
        key_workspace="shared",
        layer_devices=["cpu", "cpu", "meta", "meta"],
        **storage,
    )
    one, two = (
        cache_bytes(
            config,
            MemRoPEConfig(),
            small_hw,
            dtype=torch.bfloat16,
            kv_dtype=kv_dtype,
            key_workspace="shared",
            num_devices=devices,
        )
        for devices in (1, 2)
    )
    memories = two.memories  # not allocated before the first eviction
    assert two.total - memories == split.resident_bytes() and two.total - one.total == one.per_device


@needs_kv_dtype
def test_an_8_bit_cache_in_the_shared_workspace_is_at_most_055_of_bf16_at_the_1_3b_shape() -> None:
    bf16 = cache_bytes(WAN_1_3B, MemRoPEConfig(), LATENT_HW, dtype=torch.bfloat16, key_workspace="shared")
    fp8 = cache_bytes(
        WAN_1_3B, MemRoPEConfig(), LATENT_HW, dtype=torch.bfloat16, kv_dtype="fp8", key_workspace="shared"
    )
    assert fp8.total <= 0.55 * bf16.total
    assert fp8.scales == 30 * 2 * 12 * 1560 * 12 * 4  # float32 per token and head, keys and values


def test_the_split_shares_add_up_to_the_one_gpu_totals() -> None:
    estimate = estimate_memory(WAN_1_3B, MemRoPEConfig(), LATENT_HW, kv_dtype="int8", key_workspace="shared")
    split = estimate.split
    assert split is not None
    layers = WAN_1_3B.num_layers
    assert split.inputs + split.outputs + layers * split.per_block + split.per_device + split.transient == (
        estimate.weights + estimate.cache + estimate.activations
    )


@pytest.mark.parametrize("text_encoder_device", ["gpu", "cpu"])
@pytest.mark.parametrize("offload_vae", [False, True])
def test_the_plan_per_gpu_matches_the_device_planner(text_encoder_device: str, offload_vae: bool) -> None:
    preset = get_preset("self-forcing-60s")
    estimate = preset.memory_estimate(kv_dtype="fp8")
    probe = StaticMemoryProbe({"cuda:0": 80 * GIB, "cuda:1": 80 * GIB})
    for num_gpus, mode, devices in ((1, "single", ["cuda:0"]), (2, "split", ["cuda:0", "cuda:1"])):
        plan = preset_memory_plan(
            preset, num_gpus, kv_dtype="fp8", text_encoder_device=text_encoder_device, offload_vae=offload_vae
        )
        placed = plan_devices(
            mode,
            devices,
            num_layers=30,
            memory=estimate,
            probe=probe,
            offload=offload_vae,
            text_encoder=text_encoder_device,
        )
        assert placed.needed_bytes == plan.per_gpu
    two = preset_memory_plan(preset, 2, text_encoder_device="cpu")
    one = preset_memory_plan(preset, 1, text_encoder_device="cpu")
    assert max(two.per_gpu) < one.peak < sum(two.per_gpu)  # each GPU holds less; together a little more


def test_the_text_encoder_on_the_cpu_leaves_nothing_of_it_on_the_gpu() -> None:
    preset = get_preset("self-forcing-60s")
    gpu, cpu = (
        preset.memory_estimate(kv_dtype="fp8"),
        preset.memory_estimate(kv_dtype="fp8", text_encoder_device="cpu"),
    )
    assert gpu.text_encoder == UMT5_XXL_ENCODER_PARAMS * 2 == 11_361_320_960 and cpu.text_encoder == 0
    assert gpu.peak == gpu.text_phase > gpu.generation_phase == cpu.peak  # umT5 dominates an 8-bit run
    assert estimate_memory(WAN_1_3B, MemRoPEConfig(), LATENT_HW, text_encoder="hash").text_encoder == 0


def test_wan_1_3b_presets_fit_12_gb_with_an_8_bit_cache_and_the_text_encoder_on_the_cpu() -> None:
    """The goal of the plan: 1.3B under 12 GB. bf16 with umT5 on the GPU does not fit (12.0 GiB)."""
    for name in ("self-forcing-60s", "longlive-1h"):
        preset = get_preset(name)
        goal = preset_memory_plan(preset, kv_dtype="fp8", text_encoder_device="cpu")
        assert goal.peak < 11 * GIB and goal.smallest_gpu == 12
        assert preset_memory_plan(preset).peak > 12 * GIB


def test_the_14b_shape_needs_48_gb_or_two_32_gb_gpus() -> None:
    estimate = estimate_memory(WAN_14B, MemRoPEConfig(), LATENT_HW, kv_dtype="fp8")
    assert smallest_gpu_gb(plan_memory(estimate).peak) == 48
    assert smallest_gpu_gb(plan_memory(estimate, 2).peak) == 32


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, None),
        ("bf16", None),
        ("BF16", None),
        (torch.bfloat16, None),
        ("fp8", torch.float8_e4m3fn),
        ("float8_e4m3fn", torch.float8_e4m3fn),
        ("fp8-e5m2", torch.float8_e5m2),
        ("fp8_e5m2", torch.float8_e5m2),
        ("int8", torch.int8),
        (torch.int8, torch.int8),
    ],
)
def test_parse_kv_dtype_reads_what_users_type(text: object, expected: torch.dtype | None) -> None:
    assert parse_kv_dtype(text) == expected
    assert kv_dtype_name(parse_kv_dtype(text)) in KV_DTYPES


@pytest.mark.parametrize("bad", ["fp4", "int4", 8, torch.int32])
def test_parse_kv_dtype_refuses_the_rest_naming_the_choices(bad: object) -> None:
    with pytest.raises(ValueError, match=r"--kv-dtype must be one of bf16, fp8, fp8-e5m2, int8"):
        parse_kv_dtype(bad, "--kv-dtype")


def test_bad_plan_arguments_are_refused() -> None:
    estimate = estimate_memory(WAN_1_3B, MemRoPEConfig(), LATENT_HW)
    with pytest.raises(ValueError, match="num_gpus must be 1 or 2, got 3"):
        plan_memory(estimate, 3)
    with pytest.raises(ValueError, match=r"text_encoder_device must be one of \('gpu', 'cpu'\)"):
        estimate_memory(WAN_1_3B, MemRoPEConfig(), LATENT_HW, text_encoder_device="tpu")
    with pytest.raises(ValueError, match="key_workspace must be one of"):
        estimate_memory(WAN_1_3B, MemRoPEConfig(), LATENT_HW, key_workspace="global")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        estimate_memory(WAN_1_3B, MemRoPEConfig(), LATENT_HW, batch_size=0)


def test_a_plain_estimate_keeps_the_old_arithmetic() -> None:
    plain = MemoryEstimate(weights=4, cache=4, activations=1, text_encoder=6, vae=3, overhead=1)
    assert (plain.text_phase, plain.generation_phase, plain.peak) == (7, 13, 13)


def test_summary_and_table_cover_every_preset() -> None:
    summary = preset_memory_summary(get_preset("self-forcing-60s"))
    json.dumps(summary)
    assert len(summary["options"]) == 2 * 2 * 2 * 2  # workspace x kv x text encoder x GPUs
    assert summary["smallest"]["one_gpu"]["smallest_gpu_gb"] == 12 and summary["gpu_sizes_gb"] == list(
        GPU_SIZES_GB
    )
    text, markdown = memory_table(PRESETS), memory_table(PRESETS, markdown=True)
    labels = [line.split("  ")[0] for line in text.splitlines()[2:] if line.strip()][:-1]  # the note last
    assert "self-forcing (every length)" in labels and "tiny" in labels
    assert {label.split()[0] for label in labels} == {preset.family for preset in PRESETS.values()}
    assert "| self-forcing (every length) | 12.0 / 12.0 | 11.6 / 10.5 |" in markdown
    assert markdown.splitlines()[1].startswith("|---|")


def test_a_family_whose_lengths_need_different_memory_gets_a_row_per_length() -> None:
    preset = get_preset("self-forcing-30s")
    full = MemRoPEConfig(policy="full", max_positions=2048)
    short, long = (
        dataclasses.replace(preset, name=f"grow-{n}", family="grow", cache=full, latent_frames=n)
        for n in (24, 1200)
    )
    labels = [
        line.split("  ")[0] for line in memory_table({short.name: short, long.name: long}).splitlines()[2:4]
    ]
    assert labels == ["grow (24)", "grow (1200)"]


# ------------------------------------------------------------ memrope generate: --kv-dtype, --text-encoder-device
def _generate_args(tmp_path: Path, *extra: str, model: str = "tiny") -> argparse.Namespace:
    arguments = ["generate", "--model", model, "--prompt", "a fox", "--output", str(tmp_path / "v.mp4")]
    return build_parser().parse_args([*arguments, "--no-progress", *extra])


def test_generate_plans_the_kv_dtype_and_the_text_encoder_device(tmp_path: Path) -> None:
    plan = plan_generate(_generate_args(tmp_path, "--kv-dtype", "int8", "--text-encoder-device", "cpu"))
    assert plan.kv_dtype == torch.int8 and plan.placement.text_encoder_device == torch.device("cpu")
    assert plan.signature(plan.videos[0])["kv_dtype"] == "int8"  # a resume must keep the storage
    default = plan_generate(_generate_args(tmp_path))
    assert default.kv_dtype is None and "kv_dtype" not in default.signature(default.videos[0])
    with pytest.raises(SystemExit):
        _generate_args(tmp_path, "--kv-dtype", "fp4")


@needs_kv_dtype
@needs_video
def test_generate_with_an_8_bit_cache_writes_it_in_the_report(tmp_path: Path) -> None:
    output = tmp_path / "fox.mp4"
    assert main(tiny_args(output, "--kv-dtype", "fp8", "--num-frames", "6")) == 0
    report = json.loads(output.with_name("fox.mp4.json").read_text())
    assert report["complete"] and report["signature"]["kv_dtype"] == "float8_e4m3fn"


@needs_video
def test_generate_with_a_shared_key_workspace_holds_less(tmp_path: Path) -> None:
    sizes = {}
    for workspace in ("per_layer", "shared"):
        output = tmp_path / f"{workspace}.mp4"
        assert main(tiny_args(output, "--key-workspace", workspace, "--num-frames", "6")) == 0
        report = json.loads(output.with_name(f"{workspace}.mp4.json").read_text())
        sizes[workspace] = report["cache"]["resident_bytes"]
        assert report["signature"].get("key_workspace") == (None if workspace == "per_layer" else "shared")
    assert sizes["shared"] < sizes["per_layer"]


def test_the_pipeline_passes_the_key_workspace_to_the_cache() -> None:
    from memrope.pipeline import CausalInferencePipeline
    from memrope.presets import TINY_PRESET, tiny_model

    model = tiny_model()
    pipeline = CausalInferencePipeline(model, TINY_PRESET.cache, key_workspace="shared")
    text = torch.zeros(1, 4, TINY_PRESET.model_config.text_dim)
    next(pipeline.stream(text, num_frames=3, seed=0, latent_hw=TINY_PRESET.latent_hw))
    assert pipeline.cache is not None and pipeline.cache.key_workspace == "shared"
    with pytest.raises(ValueError, match="key_workspace must be one of"):
        CausalInferencePipeline(model, TINY_PRESET.cache, key_workspace="global")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "free_gib, kv, text_device, mode",
    [
        ((24,), None, "cuda:0", "single"),  # everything fits: bf16, umT5 on the GPU
        ((12,), torch.int8, "cuda:0", "single"),  # 8-bit fits with umT5 on the GPU (11.6 GiB)
        ((11,), torch.int8, "cpu", "single"),  # 8-bit, umT5 on the CPU: 10.5 GiB
        ((11, 11), None, "cpu", "split"),  # two GPUs hold the bf16 cache (8.2 GiB each)
    ],
)
def test_placement_auto_decides_kv_dtype_text_encoder_and_gpus_from_the_plan(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    free_gib: tuple[float, ...],
    kv: torch.dtype | None,
    text_device: str,
    mode: str,
) -> None:
    args = _generate_args(tmp_path, "--placement", "auto", model="self-forcing-60s")
    probe = StaticMemoryProbe({f"cuda:{index}": int(free * GIB) for index, free in enumerate(free_gib)})
    placement, kv_dtype = _placement(
        args, get_preset("self-forcing-60s"), None, DistributedEnv(), probe=probe
    )
    assert (placement.mode, kv_dtype, str(placement.text_encoder_device)) == (mode, kv, text_device)
    note = capsys.readouterr().err
    assert ("only with an 8-bit cache" in note) == (kv is not None)


def test_placement_auto_keeps_an_explicit_kv_dtype_and_says_what_does_not_fit(tmp_path: Path) -> None:
    args = _generate_args(tmp_path, "--placement", "auto", "--kv-dtype", "bf16", model="self-forcing-60s")
    probe = StaticMemoryProbe({"cuda:0": 11 * GIB})
    with pytest.raises(CLIError, match=r"--placement auto: the run does not fit .* text encoder on the CPU"):
        _placement(args, get_preset("self-forcing-60s"), None, DistributedEnv(), probe=probe)
    on_gpu = _generate_args(
        tmp_path, "--placement", "auto", "--text-encoder-device", "gpu", model="self-forcing-60s"
    )
    with pytest.raises(CLIError, match=r"fp8 cache.* 1 GPU: 11\.6 GiB"):  # umT5's phase alone: 11.6 GiB
        _placement(on_gpu, get_preset("self-forcing-60s"), None, DistributedEnv(), probe=probe)
