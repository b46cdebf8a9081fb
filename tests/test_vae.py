"""Streaming decoders: chunked decoding equals whole-video decoding (Wan VAE vs diffusers), 4N-3 rule."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from torch import nn

from memrope.vae import TinyDecoder, VideoDecoder, WanVAEDecoder, video_frame_count

LATENTS_MEAN = [0.1, -0.2, 0.3, 0.5]
LATENTS_STD = [1.5, 0.7, 2.0, 1.1]
# ways to cut a 7-frame latent video into chunks, the whole video in one call included
SPLITS_OF_7 = [[7], [3, 3, 1], [1] * 7, [2, 5], [4, 1, 2]]


def decode_in_chunks(
    decoder: VideoDecoder, latents: torch.Tensor, sizes: int | Sequence[int]
) -> torch.Tensor:
    decoder.reset()
    parts = torch.split(latents, sizes if isinstance(sizes, int) else list(sizes), dim=1)
    return torch.cat([decoder.decode_chunk(part) for part in parts], dim=1)


def latent_video(frames: int, channels: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, frames, channels, 4, 6, generator=torch.Generator().manual_seed(seed))


def test_video_frame_count_is_4n_minus_3() -> None:
    assert [video_frame_count(n) for n in range(5)] == [0, 1, 5, 9, 13]
    assert video_frame_count(120) == 477


def test_tiny_decoder_chunks_join_without_seams_and_follow_the_frame_rule() -> None:
    decoder = TinyDecoder(latent_channels=4, seed=3)
    assert isinstance(decoder, VideoDecoder)
    latents = latent_video(7)
    whole = decode_in_chunks(decoder, latents, 7)
    assert whole.shape == (2, video_frame_count(7), 3, 32, 48) and whole.dtype == torch.float32
    assert whole.abs().max() <= 1.0
    for sizes in SPLITS_OF_7:
        torch.testing.assert_close(decode_in_chunks(decoder, latents, sizes), whole, rtol=0, atol=0)
    decoder.reset()
    assert [decoder.decode_chunk(part).shape[1] for part in torch.split(latents, 3, dim=1)] == [9, 12, 4]


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


# --- Wan VAE ---------------------------------------------------------------------------------------


def tiny_autoencoder(**options: object) -> Any:
    """A randomly initialised Wan-architecture VAE small enough for the CPU (z_dim 4, 8x spatial and
    4x temporal compression like the real one)."""
    torch.manual_seed(0)
    vae: Any = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD,
        **options,
    )
    return vae.eval()


@pytest.fixture(scope="module")
def tiny_wan_vae() -> Any:
    return tiny_autoencoder()


@pytest.fixture(scope="module")
def tiny_wan_folder(tiny_wan_vae: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The VAE saved in the layout of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (its ``vae`` subfolder)."""
    root = tmp_path_factory.mktemp("wan")
    tiny_wan_vae.save_pretrained(root / "vae")
    return root


@pytest.fixture
def wan_decoder(tiny_wan_folder: Path, offline_hub: Path) -> WanVAEDecoder:
    return WanVAEDecoder.from_pretrained(tiny_wan_folder, device="cpu")


def reference_decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' own whole-video decode of normalised latents ``[B, F, C, H, W]`` -> ``[B, T, 3, H', W']``,
    un-normalised as diffusers' ``WanPipeline`` does (in float32, then cast to the VAE's dtype)."""
    mean = torch.tensor(LATENTS_MEAN).view(1, -1, 1, 1, 1)
    inverse_std = 1.0 / torch.tensor(LATENTS_STD).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        z = (latents.transpose(1, 2) / inverse_std + mean).to(vae.dtype)
        frames: torch.Tensor = vae.decode(z).sample.transpose(1, 2)
    return frames


def test_wan_decoder_in_chunks_matches_diffusers_whole_video_decode(
    tiny_wan_vae: Any, wan_decoder: WanVAEDecoder
) -> None:
    assert isinstance(wan_decoder, VideoDecoder)
    latents = latent_video(7)
    expected = reference_decode(tiny_wan_vae, latents)
    assert expected.shape == (2, video_frame_count(7), 3, 32, 48)
    assert expected.std() > 0.05  # not a saturated or constant video
    for sizes in SPLITS_OF_7:
        torch.testing.assert_close(decode_in_chunks(wan_decoder, latents, sizes), expected, rtol=0, atol=1e-6)
    # the frames depend on earlier chunks: decoding latent frames 3-5 as a new video gives another
    # last frame (video frame 4 * 5) than decoding them after frames 0-2
    wan_decoder.reset()
    restarted = wan_decoder.decode_chunk(latents[:, 3:6])
    assert restarted.shape[1] == video_frame_count(3)
    assert (restarted[:, -1] - expected[:, 20]).abs().max() > 0.1


def test_wan_decoder_chunks_follow_the_frame_rule(wan_decoder: WanVAEDecoder) -> None:
    latents = latent_video(7)
    wan_decoder.reset()
    assert [wan_decoder.decode_chunk(part).shape[1] for part in torch.split(latents, [1, 4, 2], dim=1)] == [
        1,
        16,
        8,
    ]


def test_wan_decoder_reset_starts_a_new_video(tiny_wan_vae: Any, wan_decoder: WanVAEDecoder) -> None:
    wan_decoder.decode_chunk(latent_video(3, seed=1))
    wan_decoder.reset()
    second = latent_video(4, seed=2)
    torch.testing.assert_close(
        wan_decoder.decode_chunk(second), reference_decode(tiny_wan_vae, second), rtol=0, atol=1e-6
    )


def test_wan_decoder_cache_does_not_grow_with_the_video(wan_decoder: WanVAEDecoder) -> None:
    def cached_elements() -> int:
        assert wan_decoder._feature_cache is not None
        return sum(entry.numel() for entry in wan_decoder._feature_cache if isinstance(entry, torch.Tensor))

    latents = latent_video(12)
    wan_decoder.decode_chunk(latents[:, :3])
    after_first_chunk = cached_elements()
    for part in torch.split(latents[:, 3:], 3, dim=1):
        wan_decoder.decode_chunk(part)
        assert cached_elements() == after_first_chunk


def test_wan_decoder_loads_the_diffusers_layout_or_the_vae_folder(
    tiny_wan_vae: Any, tiny_wan_folder: Path, offline_hub: Path
) -> None:
    latents = latent_video(3)
    expected = reference_decode(tiny_wan_vae, latents)
    for source in (tiny_wan_folder, tiny_wan_folder / "vae"):
        decoder = WanVAEDecoder.from_pretrained(source, device="cpu")
        assert decoder.vae.dtype == torch.float32 and decoder.latent_channels == 4
        torch.testing.assert_close(decoder.decode_chunk(latents), expected, rtol=0, atol=1e-6)


def test_wan_decoder_decodes_in_the_requested_dtype(
    tiny_wan_vae: Any, tiny_wan_folder: Path, offline_hub: Path
) -> None:
    decoder = WanVAEDecoder.from_pretrained(tiny_wan_folder, dtype=torch.bfloat16, device="cpu")
    assert {parameter.dtype for parameter in decoder.vae.parameters()} == {torch.bfloat16}
    latents = latent_video(5)
    frames = decode_in_chunks(decoder, latents, [2, 3])
    assert frames.dtype == torch.bfloat16 and frames.shape == (2, video_frame_count(5), 3, 32, 48)
    torch.testing.assert_close(frames, reference_decode(decoder.vae, latents), rtol=0, atol=1e-2)
    torch.testing.assert_close(frames.float(), reference_decode(tiny_wan_vae, latents), rtol=0, atol=0.05)


def test_wan_decoder_offload_visits_the_device_only_while_decoding(
    tiny_wan_vae: Any,
    tiny_wan_folder: Path,
    offline_hub: Path,
    record_moves: Callable[[nn.Module], list[torch.device]],
) -> None:
    decoder = WanVAEDecoder.from_pretrained(tiny_wan_folder, device="cpu", offload=True)
    moves = record_moves(decoder.vae)
    moves_before_decoding: list[int] = []
    decoder.vae.decoder.register_forward_pre_hook(
        lambda module, args: moves_before_decoding.append(len(moves))
    )
    latents = latent_video(5)
    frames = decode_in_chunks(decoder, latents, [2, 3])
    cpu = torch.device("cpu")
    assert moves == [decoder.device, cpu] * 2  # to the (here CPU) device and back, once per chunk
    assert moves_before_decoding == [1, 1, 3, 3, 3]  # every latent frame decodes while on the device
    torch.testing.assert_close(frames, reference_decode(tiny_wan_vae, latents), rtol=0, atol=1e-6)


def test_wan_decoder_refuses_other_vae_layouts() -> None:
    wan22 = tiny_autoencoder(is_residual=True, patch_size=2, in_channels=12, out_channels=12)
    with pytest.raises(ValueError, match="Wan2.1"):
        WanVAEDecoder(wan22)


def test_missing_diffusers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"memrope\[vae\]"):
        WanVAEDecoder.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
