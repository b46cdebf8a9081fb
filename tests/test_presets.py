"""Presets: the tiny model is deterministic and small; the official presets match docs/design.md §10."""

from __future__ import annotations

import pytest
import torch

from memrope.config import MemRoPEConfig
from memrope.encoders import WAN21_DIFFUSERS_REPO, HashTextEncoder
from memrope.loading import CHECKPOINTS
from memrope.models.wan import WanConfig
from memrope.presets import (
    MODEL_FAMILIES,
    OFFICIAL_LENGTHS,
    PRESETS,
    get_preset,
    latent_frames_for_seconds,
    presets_table,
    tiny_decoder,
    tiny_model,
    tiny_text_encoder,
)
from memrope.vae import TinyDecoder

EXPECTED_LENGTHS = {"30s": 120, "60s": 240, "120s": 480, "240s": 960, "480s": 1920, "1h": 14400}
OFFICIAL_FAMILIES = ("self-forcing", "longlive")  # the other families: tests/test_families.py


def test_official_presets_cover_both_families_and_all_lengths() -> None:
    assert dict(OFFICIAL_LENGTHS) == EXPECTED_LENGTHS
    expected = {"tiny"} | {
        f"{family}-{suffix}" for family in OFFICIAL_FAMILIES for suffix in EXPECTED_LENGTHS
    }
    assert expected <= set(PRESETS)
    official = [preset for preset in PRESETS.values() if preset.family in OFFICIAL_FAMILIES]
    assert sorted(preset.name for preset in official) == sorted(expected - {"tiny"})


@pytest.mark.parametrize("name", [name for name in PRESETS if PRESETS[name].family in OFFICIAL_FAMILIES])
def test_official_preset_matches_the_official_config(name: str) -> None:
    preset = PRESETS[name]
    family, suffix = name.rsplit("-", 1)
    assert preset.family == family and preset.checkpoint == family and family in CHECKPOINTS
    assert preset.latent_frames == EXPECTED_LENGTHS[suffix]
    assert preset.chunk_frames == 3
    assert preset.cache == MemRoPEConfig()
    assert preset.denoising_steps == (1000, 750, 500, 250) and preset.warp_denoising_step
    assert preset.shift == 5.0 and preset.context_noise == 0
    assert preset.latent_hw == (60, 104) and (preset.height, preset.width) == (480, 832)
    assert preset.model_config == WanConfig()
    assert preset.text_encoder == WAN21_DIFFUSERS_REPO == preset.vae
    assert preset.default_dtype == torch.bfloat16
    assert preset.video_frames == 4 * preset.latent_frames - 3
    info = preset.to_dict()
    assert info["checkpoint_files"][0].startswith("hf://")
    assert len(info["checkpoint_files"]) == (2 if family == "longlive" else 1)


def test_seconds_to_latent_frames() -> None:
    assert latent_frames_for_seconds(30) == 120
    assert latent_frames_for_seconds(3600) == 14400
    assert latent_frames_for_seconds(0.75) == 3
    for bad in (0, -1, 0.1, float("nan")):
        with pytest.raises(ValueError, match="seconds"):
            latent_frames_for_seconds(bad)


def test_memory_estimate_is_constant_in_length_and_below_the_official_40_gb() -> None:
    short, long = PRESETS["self-forcing-30s"].memory_estimate(), PRESETS["longlive-1h"].memory_estimate()
    assert short == long
    assert short.weights == 1_418_996_800 * 2  # Wan2.1-1.3B in bf16
    assert 4e9 < short.cache < 6e9
    assert 10e9 < short.peak < 40e9
    assert short.peak == max(short.text_phase, short.generation_phase)
    assert PRESETS["self-forcing-60s"].memory_estimate(torch.float32).weights == 1_418_996_800 * 4


def test_tiny_model_is_deterministic_small_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, again, other = tiny_model(), tiny_model(), tiny_model(seed=1)
    assert torch.equal(before, torch.random.get_rng_state())
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a)
    size = sum(t.numel() * t.element_size() for t in a.values())
    assert size < 4 * 1024**2
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    config = first.config
    assert config.in_dim == config.out_dim == 16 and config.patch_size == (1, 2, 2)


def test_tiny_companions_match_the_model() -> None:
    preset = PRESETS["tiny"]
    encoder = tiny_text_encoder()
    assert isinstance(encoder, HashTextEncoder)
    embeds = encoder.encode(["a cat"])
    assert embeds.shape == (1, preset.model_config.text_len, preset.model_config.text_dim)
    decoder = tiny_decoder()
    assert isinstance(decoder, TinyDecoder)
    frames = decoder.decode_chunk(torch.zeros(1, 3, 16, *preset.latent_hw))
    assert frames.shape == (1, 9, 3, preset.height, preset.width)
    assert preset.checkpoint is None and preset.is_tiny


def test_presets_table_lists_every_family_and_with_every_preset_each_preset() -> None:
    grouped = presets_table()
    for family in MODEL_FAMILIES.values():
        presets_of = list(family.presets().values())
        name = presets_of[0].name if len(presets_of) == 1 else f"{family.name}-<length>"
        line = next(line for line in grouped.splitlines() if line.split()[:1] == [name])
        assert line.endswith(presets_of[0].license)
        if len(presets_of) > 1:
            assert ", ".join(preset.name.removeprefix(f"{family.name}-") for preset in presets_of) in line
    table = presets_table(every_preset=True)
    for name, preset in PRESETS.items():
        line = next(line for line in table.splitlines() if line.split()[:1] == [name])
        assert str(preset.latent_frames) in line.split()
        assert "GiB" in line or preset.text_encoder == "hash"  # the download-free presets are small
        assert line.endswith(preset.license)
    assert "hf://gdhe17/Self-Forcing/checkpoints/self_forcing_dmd.pt" in table
    assert WAN21_DIFFUSERS_REPO in table


def test_get_preset_lists_valid_names() -> None:
    assert get_preset("longlive-60s").latent_frames == 240
    with pytest.raises(KeyError, match="self-forcing-1h"):
        get_preset("self-forcing-2h")


def test_presets_are_made_from_the_family_table() -> None:
    from memrope.presets import MODEL_FAMILIES

    assert next(iter(MODEL_FAMILIES)) == "tiny" and set(OFFICIAL_FAMILIES) <= set(MODEL_FAMILIES)
    made = {name: preset for family in MODEL_FAMILIES.values() for name, preset in family.presets().items()}
    assert made == dict(PRESETS) and list(made) == list(PRESETS)
    kinds = {name: PRESETS[name].lora_checkpoint_kind for name in ("self-forcing-30s", "longlive-30s")}
    assert kinds == {"self-forcing-30s": "auto", "longlive-30s": "longlive"}
    assert {preset.lora_checkpoint_kind for preset in PRESETS.values() if preset.family != "longlive"} == {
        "auto"
    }


def test_a_new_family_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from memrope import presets

    families_before = set(presets.MODEL_FAMILIES)
    monkeypatch.setattr(presets, "_FAMILIES", dict(presets._FAMILIES))
    monkeypatch.setattr(presets, "_PRESETS", dict(presets._PRESETS))
    monkeypatch.setattr(presets, "MODEL_FAMILIES", presets.MappingProxyType(presets._FAMILIES))
    monkeypatch.setattr(presets, "PRESETS", presets.MappingProxyType(presets._PRESETS))
    family = presets.ModelFamily(
        name="wide",
        description="a wider tiny DiT, {length}: {latent_frames} latent frames at {height}x{width}",
        checkpoint=None,
        lengths={"short": 6, "long": 12},
        model_config=dataclasses.replace(presets.TINY_MODEL_CONFIG, dim=128),
        latent_hw=(8, 8),
        cache=MemRoPEConfig(cache_frames=9, sink_frames=1, chunk_frames=2),
    )
    assert presets.register_model_family(family) is family
    wide = presets.get_preset("wide-long")
    assert (wide.family, wide.latent_frames, wide.chunk_frames, wide.model_config.dim) == ("wide", 12, 2, 128)
    assert wide.description == "a wider tiny DiT, long: 12 latent frames at 64x64"
    assert "wide-short" in presets.presets_table(every_preset=True)
    assert "wide-<length>" in presets.presets_table()
    with pytest.raises(ValueError, match="a model family named 'wide' is already registered"):
        presets.register_model_family(family)
    with pytest.raises(ValueError, match=r"preset names \['longlive-1h'\] are taken"):
        presets.register_model_family(dataclasses.replace(family, name="longlive-1h", lengths={"": 6}))
    with pytest.raises(ValueError, match="must name at least one length"):
        presets.register_model_family(dataclasses.replace(family, name="empty", lengths={}))
    with pytest.raises(TypeError, match="family must be a ModelFamily"):
        presets.register_model_family("wide")  # type: ignore[arg-type]
    assert set(presets.MODEL_FAMILIES) == families_before | {"wide"}


def test_memrope_presets_shows_the_memory_plan(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from memrope.cli import main

    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    assert "memory plan (peak GPU memory, GiB):" in text and "1 GPU 8-bit (TE GPU/CPU)" in text
    assert main(["presets", "--json"]) == 0
    described = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    plan = described["self-forcing-60s"]["memory_plan"]
    assert plan["smallest"]["one_gpu"]["smallest_gpu_gb"] == 12
    assert {option["text_encoder_device"] for option in plan["options"]} == {"gpu", "cpu"}
    assert main(["presets", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| presets | 1 GPU bf16 (TE GPU/CPU) |")


def test_memory_estimate_takes_the_kv_dtype_workspace_and_text_encoder_device() -> None:
    preset = PRESETS["self-forcing-60s"]
    bf16, fp8 = preset.memory_estimate(), preset.memory_estimate(kv_dtype="fp8", key_workspace="shared")
    assert fp8.cache < 0.4 * bf16.cache  # 8 bits and one shared RoPE'd-key workspace
    assert preset.memory_estimate(text_encoder_device="cpu").text_encoder == 0
    assert fp8.settings["kv_dtype"] == "float8_e4m3fn" and fp8.settings["key_workspace"] == "shared"


def test_an_unknown_preset_names_the_nearest_one_and_its_family() -> None:
    from memrope.presets import unknown_preset_message

    message = unknown_preset_message("self-forcing-2h")
    assert "nearest: 'self-forcing-1h'" in message and "self-forcing-30s" in message
    assert "--seconds" in message
    assert "causal-forcing-chunkwise, causal-forcing-longvideo" in unknown_preset_message("causal-forcing")


def test_the_cli_takes_a_family_name_for_its_first_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from memrope.cli.generate_plan import _resolve_preset
    from memrope.errors import CLIError

    assert _resolve_preset("causvid").name == "causvid-30s"
    assert _resolve_preset("krea").name == "krea-realtime-14b-30s"
    assert "using preset krea-realtime-14b-30s" in capsys.readouterr().err
    with pytest.raises(CLIError, match="starts the families"):
        _resolve_preset("causal-forcing")
