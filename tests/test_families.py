"""The Self-Forcing family as presets and loaders: Causal Forcing (chunk-wise, frame-wise, ++), CausVid,
Reward Forcing and Krea Realtime 14B.

Each family's preset carries the facts of its own configs (cited in ``memrope/presets.py``), each
checkpoint loads offline through the Hub code path from a file the test writes in the family's exact
layout (tiny shapes, the published names, prefixes and nesting), and each family's chunk size and step
list runs through the pipeline on the tiny model.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from memrope import components
from memrope.convert import to_diffusers_state_dict
from memrope.flow_matching import FlowMatchScheduler
from memrope.loading import (
    CHECKPOINTS,
    CheckpointFormatError,
    HubFile,
    load_wan_weights,
    parse_hf_uri,
    read_state_dict,
    resolve_checkpoint,
)
from memrope.models.wan import CausalWanModel, WanConfig
from memrope.presets import (
    LICENSE_NOT_STATED,
    MODEL_FAMILIES,
    OFFICIAL_LENGTHS,
    PRESETS,
    TINY_MODEL_CONFIG,
    WAN21_T2V_14B_CONFIG,
    ModelFamily,
    get_preset,
    presets_table,
    tiny_model,
)

COMMIT_HASH = "89abcdef0123456789abcdef0123456789abcdef"
SMALL_CONFIG = WanConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, text_len=8, freq_dim=32
)
SF_STEPS = (1000, 750, 500, 250)


class FamilyFacts(NamedTuple):
    """What a family's own code and configs say (see the citations in memrope/presets.py)."""

    checkpoint: str
    repo_id: str
    filename: str
    use_ema: bool
    chunk_frames: int
    steps: tuple[int, ...]
    warp: bool
    shift: float
    cache_frames: int
    sink_frames: int
    license: str
    first_chunk_steps: tuple[int, ...] | None = None  # Causal Forcing++: denoising_step_list_first_chunk


FACTS: dict[str, FamilyFacts] = {
    "causal-forcing-chunkwise": FamilyFacts(
        "causal-forcing-chunkwise",
        "zhuhz22/Causal-Forcing",
        "chunkwise/causal_forcing.pt",
        False,
        3,
        SF_STEPS,
        True,
        5.0,
        12,
        3,
        "Apache-2.0",
    ),
    "causal-forcing-longvideo": FamilyFacts(
        "causal-forcing-longvideo",
        "zhuhz22/Causal-Forcing",
        "chunkwise/longvideo.pt",
        True,
        3,
        SF_STEPS,
        True,
        5.0,
        12,
        3,
        "Apache-2.0",
    ),
    "causal-forcing-framewise": FamilyFacts(
        "causal-forcing-framewise",
        "zhuhz22/Causal-Forcing",
        "framewise/causal_forcing.pt",
        True,
        1,
        SF_STEPS,
        True,
        5.0,
        12,
        3,
        "Apache-2.0",
    ),
    "causal-forcing-framewise-2step": FamilyFacts(
        "causal-forcing-framewise-2step",
        "zhuhz22/Causal-Forcing",
        "causal-forcing++/framewise-2step.pt",
        True,
        1,
        (1000, 500),
        True,
        5.0,
        12,
        3,
        "Apache-2.0",
        SF_STEPS,
    ),
    "causal-forcing-framewise-1step": FamilyFacts(
        "causal-forcing-framewise-1step",
        "zhuhz22/Causal-Forcing",
        "causal-forcing++/framewise-1step.pt",
        True,
        1,
        (1000,),
        True,
        5.0,
        12,
        3,
        "Apache-2.0",
        SF_STEPS,
    ),
    "causvid": FamilyFacts(
        "causvid",
        "tianweiy/CausVid",
        "autoregressive_checkpoint/model.pt",
        False,
        3,
        (1000, 757, 522),
        False,
        8.0,
        12,
        3,
        "MIT",
    ),
    "reward-forcing": FamilyFacts(
        "reward-forcing",
        "JaydenLu666/Reward-Forcing-T2V-1.3B",
        "rewardforcing.pt",
        True,
        3,
        SF_STEPS,
        True,
        5.0,
        9,
        3,
        f"{LICENSE_NOT_STATED} (see model card)",
    ),
    "krea-realtime-14b": FamilyFacts(
        "krea-realtime-video-14b",
        "krea/krea-realtime-video",
        "krea-realtime-video-14b.safetensors",
        True,
        3,
        SF_STEPS,
        True,
        5.0,
        12,
        3,
        "Apache-2.0",
    ),
}


# --- helpers --------------------------------------------------------------------------------------


def small_weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(tensor.shape, generator=generator)
        for name, tensor in CausalWanModel(SMALL_CONFIG).state_dict().items()
    }


def wrapper_names(weights: dict[str, torch.Tensor], *, fsdp: bool = False) -> dict[str, torch.Tensor]:
    """The names of Self-Forcing's training wrapper (``WanDiffusionWrapper.model``), FSDP-wrapped or not."""
    prefix = "model._fsdp_wrapped_module." if fsdp else "model."
    return {f"{prefix}{name}": tensor for name, tensor in weights.items()}


def snapshot_dir(cache: Path, repo_id: str) -> Path:
    """``models--owner--name/snapshots/<commit>/`` of huggingface_hub's cache layout, with ``refs/main``."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT_HASH)
    snapshot = repo_dir / "snapshots" / COMMIT_HASH
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def cache_torch_file(cache: Path, repo_id: str, filename: str, content: object) -> Path:
    target = snapshot_dir(cache, repo_id) / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, target)
    return target


def assert_holds(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)


def small_preset(family: str) -> Any:
    """The family's 30 s preset with the small test shape (same checkpoint, sampler and cache)."""
    return dataclasses.replace(get_preset(f"{family}-30s"), model_config=SMALL_CONFIG)


# --- preset facts ---------------------------------------------------------------------------------


def test_every_family_of_the_issue_is_registered() -> None:
    assert set(FACTS) <= set(MODEL_FAMILIES)
    for family in FACTS:
        assert {f"{family}-{length}" for length in OFFICIAL_LENGTHS} <= set(PRESETS)


@pytest.mark.parametrize("family", sorted(FACTS))
def test_preset_carries_the_family_facts(family: str) -> None:
    facts = FACTS[family]
    entry = CHECKPOINTS[facts.checkpoint]
    assert (entry.weights.repo_id, entry.weights.filename, entry.use_ema) == (
        facts.repo_id,
        facts.filename,
        facts.use_ema,
    )
    for length, latent_frames in OFFICIAL_LENGTHS.items():
        preset = get_preset(f"{family}-{length}")
        assert (preset.family, preset.checkpoint, preset.latent_frames) == (
            family,
            facts.checkpoint,
            latent_frames,
        )
        assert preset.chunk_frames == facts.chunk_frames
        assert preset.denoising_steps == facts.steps
        assert preset.first_chunk_denoising_steps == facts.first_chunk_steps
        assert (preset.warp_denoising_step, preset.shift, preset.context_noise) == (
            facts.warp,
            facts.shift,
            0.0,
        )
        assert (preset.cache.policy, preset.cache.cache_frames, preset.cache.sink_frames) == (
            "memrope",
            facts.cache_frames,
            facts.sink_frames,
        )
        assert preset.latent_hw == (60, 104) and (preset.height, preset.width) == (480, 832)
        assert preset.license == facts.license
        assert preset.to_dict()["license"] == facts.license
    expected_shape = WAN21_T2V_14B_CONFIG if family == "krea-realtime-14b" else WanConfig()
    assert get_preset(f"{family}-30s").model_config == expected_shape


def test_framewise_presets_compute_what_the_official_code_computes() -> None:
    """1-frame chunks fall inside the 3-frame sink: the official sink protection applies (docs/design.md §3)."""
    for family in (
        "causal-forcing-framewise",
        "causal-forcing-framewise-2step",
        "causal-forcing-framewise-1step",
    ):
        cache = get_preset(f"{family}-60s").cache
        assert cache.chunk_frames == 1 and cache.protect_sink_on_rewrite
        assert (cache.memory_frames, cache.recent_frames) == (2, 6)
    assert get_preset("self-forcing-60s").cache.protect_sink_on_rewrite


def test_the_14b_shape_is_wan21_t2v_14b() -> None:
    config = WAN21_T2V_14B_CONFIG
    assert (config.dim, config.num_heads, config.head_dim, config.num_layers, config.ffn_dim) == (
        5120,
        40,
        128,
        40,
        13824,
    )
    # 14_288_491_584 parameters: CausalWanModel(WAN21_T2V_14B_CONFIG) counted on the meta device
    assert get_preset("krea-realtime-14b-60s").memory_estimate().weights == 14_288_491_584 * 2


def test_licenses_are_shown_for_every_preset() -> None:
    table = presets_table(every_preset=True)
    header, *rows = table.splitlines()
    assert header.split()[-1] == "license"
    for name, preset in PRESETS.items():
        line = next(row for row in rows if row.split()[:1] == [name])
        assert line.endswith(preset.license), name
        assert preset.license.strip()


def test_a_family_needs_a_license_string() -> None:
    family = MODEL_FAMILIES["causvid"]
    for bad in ("", "  "):
        with pytest.raises(ValueError, match="license must be a non-empty string"):
            dataclasses.replace(family, license=bad)
    plain = ModelFamily(
        name="plain",
        description="d",
        checkpoint=None,
        lengths={"": 3},
        model_config=TINY_MODEL_CONFIG,
        latent_hw=(4, 4),
    )
    assert plain.license == LICENSE_NOT_STATED == plain.presets()["plain"].license


# --- loaders on the exact published layouts, offline through the Hub cache -------------------------


@pytest.mark.parametrize(
    "family",
    [
        "causal-forcing-chunkwise",
        "causal-forcing-longvideo",
        "causal-forcing-framewise",
        "causal-forcing-framewise-2step",
        "causal-forcing-framewise-1step",
        "reward-forcing",
    ],
)
def test_training_checkpoint_families_load_the_generator_their_inference_loads(
    offline_hub: Path, family: str
) -> None:
    """``{"generator": ..., "generator_ema": ...}`` of wrapper names; the README's --use_ema picks one."""
    facts = FACTS[family]
    ema, raw = small_weights(1), small_weights(2)
    cache_torch_file(
        offline_hub,
        facts.repo_id,
        facts.filename,
        {"generator": wrapper_names(raw, fsdp=True), "generator_ema": wrapper_names(ema), "step": 600},
    )
    model = components.load_model(small_preset(family), device="cpu")
    assert_holds(model, ema if facts.use_ema else raw)
    other = load_wan_weights(CausalWanModel(SMALL_CONFIG), facts.checkpoint, use_ema=not facts.use_ema)
    assert_holds(other, raw if facts.use_ema else ema)


def test_causvid_loads_its_generator_without_an_ema_warning(offline_hub: Path) -> None:
    """CausVid's model.pt holds only ``generator`` (minimal_inference/autoregressive_inference.py)."""
    weights = small_weights(3)
    cache_torch_file(
        offline_hub,
        "tianweiy/CausVid",
        "autoregressive_checkpoint/model.pt",
        {"generator": wrapper_names(weights)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = components.load_model(small_preset("causvid"), device="cpu")
    assert_holds(model, weights)
    with pytest.warns(UserWarning, match="has no 'generator_ema'"):
        load_wan_weights(CausalWanModel(SMALL_CONFIG), "causvid", use_ema=True)


def test_krea_single_safetensors_file_loads(offline_hub: Path) -> None:
    """``krea-realtime-video-14b.safetensors``: the training wrapper's ``model.`` names."""
    weights = small_weights(4)
    target = snapshot_dir(offline_hub, "krea/krea-realtime-video") / "krea-realtime-video-14b.safetensors"
    save_file(wrapper_names(weights), target)
    model = components.load_model(small_preset("krea-realtime-14b"), device="cpu")
    assert_holds(model, weights)


def write_diffusers_shards(folder: Path, weights: dict[str, torch.Tensor], shards: int = 3) -> None:
    """``diffusion_pytorch_model-0000i-of-0000n.safetensors`` + index + config.json, diffusers names."""
    folder.mkdir(parents=True, exist_ok=True)
    renamed = to_diffusers_state_dict(weights)
    names = sorted(renamed)
    weight_map = {}
    for index in range(shards):
        shard_name = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = names[index::shards]
        save_file({name: renamed[name].contiguous() for name in part}, folder / shard_name)
        weight_map.update(dict.fromkeys(part, shard_name))
    index_file = folder / "diffusion_pytorch_model.safetensors.index.json"
    index_file.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))


def test_krea_diffusers_transformer_folder_loads(offline_hub: Path) -> None:
    """The 3-shard ``transformer/`` folder of krea/krea-realtime-video, in diffusers' names."""
    weights = small_weights(5)
    write_diffusers_shards(snapshot_dir(offline_hub, "krea/krea-realtime-video") / "transformer", weights)
    preset = small_preset("krea-realtime-14b")
    model = components.load_model(preset, checkpoint="krea-realtime-video-14b-diffusers", device="cpu")
    assert_holds(model, weights)
    uri = CHECKPOINTS["krea-realtime-video-14b-diffusers"].weights.uri
    assert uri == "hf://krea/krea-realtime-video/transformer/"
    assert resolve_checkpoint(uri).is_dir()


def test_an_uncached_hub_folder_is_a_clear_error(offline_hub: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        resolve_checkpoint("krea-realtime-video-14b-diffusers")
    message = str(caught.value)
    assert "folder 'transformer/' of Hugging Face repo 'krea/krea-realtime-video'" in message
    assert "huggingface-cli download krea/krea-realtime-video --include 'transformer/*'" in message
    (snapshot_dir(offline_hub, "krea/krea-realtime-video") / "other.txt").write_text("x")
    with pytest.raises(
        FileNotFoundError, match="'transformer/' of Hugging Face repo .* is not in its snapshot"
    ):
        resolve_checkpoint("krea-realtime-video-14b-diffusers")


def test_hub_folder_uris_keep_their_trailing_slash() -> None:
    assert parse_hf_uri("hf://krea/krea-realtime-video/transformer/") == HubFile(
        "krea/krea-realtime-video", "transformer/"
    )
    assert parse_hf_uri("hf://krea/krea-realtime-video/transformer/").is_folder
    assert not parse_hf_uri("hf://owner/name/model.pt").is_folder


def test_diffusers_names_in_a_local_folder_are_renamed(tmp_path: Path) -> None:
    weights = small_weights(6)
    write_diffusers_shards(tmp_path / "transformer", weights, shards=2)
    assert read_state_dict(tmp_path / "transformer").keys() == weights.keys()
    broken = to_diffusers_state_dict(weights) | {"condition_embedder.unknown.weight": torch.zeros(1)}
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointFormatError, match="diffusers-layout names that cannot be mapped"):
        read_state_dict(tmp_path / "broken.safetensors")


def test_use_ema_must_be_a_bool_or_none(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(small_weights(7), path)
    with pytest.raises(TypeError, match="use_ema must be True, False or None"):
        load_wan_weights(CausalWanModel(SMALL_CONFIG), path, use_ema="yes")  # type: ignore[arg-type]


# --- each family's chunk size and step list through the pipeline -----------------------------------


@pytest.mark.parametrize("family", sorted(FACTS))
def test_family_sampler_runs_on_the_tiny_model(family: str) -> None:
    facts = FACTS[family]
    preset = dataclasses.replace(get_preset(f"{family}-30s"), model_config=TINY_MODEL_CONFIG)
    model = tiny_model()
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    pipeline = components.make_pipeline(preset, model)
    scheduler = FlowMatchScheduler(shift=facts.shift, sigma_min=0.0)
    expected = scheduler.warp(facts.steps) if facts.warp else torch.tensor(facts.steps, dtype=torch.float32)
    torch.testing.assert_close(pipeline.timesteps, expected)
    chunks = 3
    text = torch.randn(
        1, TINY_MODEL_CONFIG.text_len, TINY_MODEL_CONFIG.text_dim, generator=torch.Generator().manual_seed(0)
    )
    latents = pipeline.generate(text, num_frames=chunks * facts.chunk_frames, seed=0, latent_hw=(4, 4))
    assert latents.shape == (1, chunks * facts.chunk_frames, 16, 4, 4)
    assert torch.isfinite(latents).all()
    first_steps = len(facts.steps if facts.first_chunk_steps is None else facts.first_chunk_steps)
    # every step, then the clean context call; the first chunk has its own steps (Causal Forcing++)
    assert len(calls) == first_steps + 1 + (chunks - 1) * (len(facts.steps) + 1)
    assert pipeline.cache_config == preset.cache


def test_only_the_toy_is_unconditional_and_the_flag_is_a_bool() -> None:
    assert [name for name, preset in PRESETS.items() if preset.unconditional] == ["toy"]
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="model family 'toy': unconditional must be a bool"):
            dataclasses.replace(MODEL_FAMILIES["toy"], unconditional=bad)
        with pytest.raises(TypeError, match="preset 'toy': unconditional must be a bool"):
            dataclasses.replace(PRESETS["toy"], unconditional=bad)
