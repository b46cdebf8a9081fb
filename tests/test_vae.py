"""Streaming decoders: chunked decoding equals whole-video decoding (Wan VAE vs diffusers), 4N-3 rule."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from memrope.vae import TinyDecoder, VideoDecoder, WanVAEDecoder, video_frame_count

LATENTS_MEAN = [0.1, -0.2, 0.3, 0.5]
LATENTS_STD = [1.5, 0.7, 2.0, 1.1]


def decode_in_chunks(decoder: VideoDecoder, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    decoder.reset()
    return torch.cat([decoder.decode_chunk(part) for part in latents.split(chunk, dim=1)], dim=1)


def latent_video(frames: int, channels: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, frames, channels, 4, 6, generator=torch.Generator().manual_seed(seed))


def test_video_frame_count_is_4n_minus_3() -> None:
    assert [video_frame_count(n) for n in range(5)] == [0, 1, 5, 9, 13]
    assert video_frame_count(120) == 477


def test_tiny_decoder_chunks_join_without_seams_and_follow_the_frame_rule() -> None:
    decoder = TinyDecoder(latent_channels=4, seed=3)
    assert isinstance(decoder, VideoDecoder)
    latents = latent_video(7)
    whole = decode_in_chunks(decoder, latents, chunk=7)
    assert whole.shape == (2, video_frame_count(7), 3, 32, 48) and whole.dtype == torch.float32
    assert whole.abs().max() <= 1.0
    for chunk in (1, 2, 3):
        torch.testing.assert_close(decode_in_chunks(decoder, latents, chunk), whole, rtol=0, atol=0)
    decoder.reset()
    assert [decoder.decode_chunk(part).shape[1] for part in latents.split(3, dim=1)] == [9, 12, 4]


def test_tiny_decoder_colours_blend_between_latent_frames() -> None:
    decoder = TinyDecoder(latent_channels=4, seed=3)
    latents = latent_video(2)
    frames = decoder.decode_chunk(latents)
    images = torch.tanh(torch.einsum("bfchw,oc->bfohw", latents, decoder.projection))
    images = images.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)
    torch.testing.assert_close(frames[:, 0], images[:, 0])
    torch.testing.assert_close(frames[:, 2], 0.5 * (images[:, 0] + images[:, 1]))
    torch.testing.assert_close(frames[:, 4], images[:, 1])


def test_tiny_decoder_is_deterministic_per_seed() -> None:
    latents = latent_video(3)
    first = TinyDecoder(latent_channels=4, seed=1).decode_chunk(latents)
    assert torch.equal(TinyDecoder(latent_channels=4, seed=1).decode_chunk(latents), first)
    assert not torch.equal(TinyDecoder(latent_channels=4, seed=2).decode_chunk(latents), first)


def test_decoders_refuse_malformed_latents() -> None:
    decoder = TinyDecoder(latent_channels=4)
    for shape in [(2, 3, 5, 4, 6), (3, 4, 4, 6), (2, 0, 4, 4, 6)]:
        with pytest.raises(ValueError, match="expected latents"):
            decoder.decode_chunk(torch.zeros(shape))


@pytest.fixture(scope="module")
def tiny_wan_vae() -> Any:
    """A randomly initialised Wan2.1-architecture VAE small enough for the CPU (z_dim 4)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
    ).eval()


def reference_decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' own whole-video decode of normalised latents ``[B, F, C, H, W]`` -> ``[B, T, 3, H', W']``."""
    mean = torch.tensor(LATENTS_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(LATENTS_STD).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        return vae.decode(latents.transpose(1, 2) * std + mean).sample.transpose(1, 2)


def test_wan_decoder_in_chunks_matches_diffusers_whole_video_decode(tiny_wan_vae: Any) -> None:
    decoder = WanVAEDecoder(tiny_wan_vae)
    assert isinstance(decoder, VideoDecoder)
    latents = latent_video(7)
    expected = reference_decode(tiny_wan_vae, latents)
    assert expected.shape == (2, video_frame_count(7), 3, 32, 48)
    assert expected.std() > 0.05  # not a saturated or constant video
    for chunk in (3, 1, 7):
        torch.testing.assert_close(decode_in_chunks(decoder, latents, chunk), expected, rtol=0, atol=1e-5)


def test_wan_decoder_reset_starts_a_new_video(tiny_wan_vae: Any) -> None:
    decoder = WanVAEDecoder(tiny_wan_vae)
    decoder.decode_chunk(latent_video(3, seed=1))
    decoder.reset()
    second = latent_video(4, seed=2)
    torch.testing.assert_close(decoder.decode_chunk(second), reference_decode(tiny_wan_vae, second),
                               rtol=0, atol=1e-5)


def test_wan_decoder_cache_does_not_grow_with_the_video(tiny_wan_vae: Any) -> None:
    decoder = WanVAEDecoder(tiny_wan_vae)

    def cached_elements() -> int:
        assert decoder._feature_cache is not None
        return sum(entry.numel() for entry in decoder._feature_cache if isinstance(entry, torch.Tensor))

    latents = latent_video(12)
    decoder.decode_chunk(latents[:, :3])
    after_first_chunk = cached_elements()
    for part in latents[:, 3:].split(3, dim=1):
        decoder.decode_chunk(part)
        assert cached_elements() == after_first_chunk


def test_wan_decoder_loads_a_local_diffusers_folder(tiny_wan_vae: Any, tmp_path: Path) -> None:
    tiny_wan_vae.save_pretrained(tmp_path / "vae")
    latents = latent_video(3)
    expected = reference_decode(tiny_wan_vae, latents)
    for source in (tmp_path, tmp_path / "vae"):
        decoder = WanVAEDecoder.from_pretrained(source, device="cpu")
        torch.testing.assert_close(decoder.decode_chunk(latents), expected, rtol=0, atol=1e-5)


def test_wan_decoder_refuses_other_vae_layouts() -> None:
    diffusers = pytest.importorskip("diffusers")
    wan22 = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                       latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
                                       is_residual=True, patch_size=2, in_channels=12, out_channels=12)
    with pytest.raises(ValueError, match="Wan2.1"):
        WanVAEDecoder(wan22)


def test_missing_diffusers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"memrope\[vae\]"):
        WanVAEDecoder.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
