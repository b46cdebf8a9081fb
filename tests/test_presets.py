"""Presets: the tiny model is deterministic and small; the official presets match docs/design.md §10."""

from __future__ import annotations

import pytest
import torch

from memrope.config import MemRoPEConfig
from memrope.encoders import WAN21_DIFFUSERS_REPO, HashTextEncoder
from memrope.loading import CHECKPOINTS
from memrope.models.wan import WanConfig
from memrope.presets import (
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


def test_official_presets_cover_both_families_and_all_lengths() -> None:
    assert dict(OFFICIAL_LENGTHS) == EXPECTED_LENGTHS
    expected = {"tiny"} | {
        f"{family}-{suffix}" for family in ("self-forcing", "longlive") for suffix in EXPECTED_LENGTHS
    }
    assert set(PRESETS) == expected


@pytest.mark.parametrize("name", [name for name in PRESETS if name != "tiny"])
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


def test_presets_table_lists_every_preset_with_its_memory() -> None:
    table = presets_table()
    for name, preset in PRESETS.items():
        line = next(line for line in table.splitlines() if line.split()[:1] == [name])
        assert str(preset.latent_frames) in line.split() and "GiB" in line or name == "tiny"
    assert "hf://gdhe17/Self-Forcing/checkpoints/self_forcing_dmd.pt" in table
    assert WAN21_DIFFUSERS_REPO in table


def test_get_preset_lists_valid_names() -> None:
    assert get_preset("longlive-60s").latent_frames == 240
    with pytest.raises(KeyError, match="self-forcing-1h"):
        get_preset("self-forcing-2h")


def test_presets_are_made_from_the_family_table() -> None:
    from memrope.presets import MODEL_FAMILIES

    assert list(MODEL_FAMILIES) == ["tiny", "self-forcing", "longlive"]
    made = {name: preset for family in MODEL_FAMILIES.values() for name, preset in family.presets().items()}
    assert made == dict(PRESETS) and list(made) == list(PRESETS)
    kinds = {name: preset.lora_checkpoint_kind for name, preset in PRESETS.items() if name.endswith("-30s")}
    assert kinds == {"self-forcing-30s": "auto", "longlive-30s": "longlive"}


def test_a_new_family_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from memrope import presets

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
    assert "wide-short" in presets.presets_table()
    with pytest.raises(ValueError, match="a model family named 'wide' is already registered"):
        presets.register_model_family(family)
    with pytest.raises(ValueError, match=r"preset names \['longlive-1h'\] are taken"):
        presets.register_model_family(dataclasses.replace(family, name="longlive-1h", lengths={"": 6}))
    with pytest.raises(ValueError, match="must name at least one length"):
        presets.register_model_family(dataclasses.replace(family, name="empty", lengths={}))
    with pytest.raises(TypeError, match="family must be a ModelFamily"):
        presets.register_model_family("wide")  # type: ignore[arg-type]
    assert set(presets.MODEL_FAMILIES) == {"tiny", "self-forcing", "longlive", "wide"}
