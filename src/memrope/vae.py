"""Streaming latent -> video decoders (docs/design.md §10).

A :class:`VideoDecoder` decodes a latent video chunk by chunk: every :meth:`~VideoDecoder.decode_chunk`
call continues the video of the previous calls (temporal context is kept inside the decoder), so
decoding in chunks gives the same frames as decoding the whole video at once, without seams, and
memory does not grow with the length of the video. :meth:`~VideoDecoder.reset` starts a new video.

Frames come out as float ``[B, T, 3, 8*H, 8*W]`` in ``[-1, 1]`` on the decoder's device;
:func:`memrope.video.to_uint8` turns them into ``uint8`` frames for a writer. With Wan's temporal
factor 4, ``N`` latent frames give ``4N - 3`` video frames: the first latent frame of a video gives
one frame, every later latent frame four.

* :class:`WanVAEDecoder` wraps diffusers' ``AutoencoderKLWan`` (the ``vae`` extra) and keeps its
  causal-convolution feature cache between calls.
* :class:`TinyDecoder` is a weight-free stand-in for the built-in tiny model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from memrope.devices import default_device, offloaded
from memrope.encoders import WAN21_DIFFUSERS_REPO, component_location
from memrope.video_lengths import video_frame_count

__all__ = ["TinyDecoder", "VideoDecoder", "WanVAEDecoder", "video_frame_count"]


@runtime_checkable
class VideoDecoder(Protocol):
    """Streaming decoder of one latent video per batch row."""

    def reset(self) -> None:
        """Forget the temporal context: the next chunk starts a new video."""
        ...

    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Latents ``[B, F, C, H, W]`` continuing the current video -> frames ``[B, T, 3, 8H, 8W]``
        in ``[-1, 1]`` (``T = 4F`` except ``4F - 3`` for the first chunk of a video)."""
        ...


def _check_latents(latents: Tensor, channels: int) -> None:
    if latents.dim() != 5 or latents.shape[2] != channels or latents.shape[1] == 0:
        raise ValueError(f"expected latents [B, F >= 1, {channels}, H, W], got {tuple(latents.shape)}")


def _import_autoencoder() -> tuple[Any, type[nn.Module]]:
    try:
        from diffusers import AutoencoderKLWan
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
    except ImportError as error:
        raise ImportError("WanVAEDecoder needs diffusers: pip install 'memrope[vae]'") from error
    return AutoencoderKLWan, WanCausalConv3d


class WanVAEDecoder:
    """Wan2.1's VAE decoder (diffusers ``AutoencoderKLWan``), decoding causally frame by frame.

    Latents are the DiT's normalised latents; they are un-normalised per channel with the VAE
    config's statistics (``z * latents_std + latents_mean``, computed as ``z / (1 / std) + mean`` like
    Wan and diffusers' pipeline do, in float32 before the cast to the VAE's dtype). Every latent frame
    goes through the decoder with the shared feature cache (the last two frames of input to each
    causal 3-D convolution), which is exactly what ``AutoencoderKLWan.decode`` does for a whole video,
    except that the cache survives between calls; its size is fixed by the frame size, not the video
    length. Output frames are clamped to ``[-1, 1]`` and returned in the VAE's dtype on ``device``
    (default: where the VAE's weights are). With ``offload`` the weights wait on the CPU and visit
    ``device`` only during :meth:`decode_chunk` (the small feature cache stays on ``device``).
    """

    def __init__(self, vae: Any, *, device: torch.device | str | None = None, offload: bool = False) -> None:
        _, causal_conv = _import_autoencoder()
        config = vae.config
        if config.patch_size is not None or config.is_residual:
            raise ValueError("WanVAEDecoder supports the Wan2.1 VAE (no patch_size, not residual)")
        self.vae: Any = vae.eval().requires_grad_(False)
        self.latent_channels = int(config.z_dim)
        self._num_cached_convs = sum(isinstance(module, causal_conv) for module in vae.decoder.modules())
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._inverse_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._feature_cache: list[Any] | None = None
        self.device = torch.device(device) if device is not None else next(vae.parameters()).device
        self.offload = offload
        self.vae.to("cpu" if offload else self.device)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = WAN21_DIFFUSERS_REPO,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        offload: bool = False,
    ) -> WanVAEDecoder:
        """Load the VAE from the Hub (``vae`` subfolder of the Diffusers layout) or a local folder.

        float32 by default, as in diffusers' Wan examples; the Wan2.1 VAE is small (~0.5 GB).
        ``device`` defaults to CUDA when available; ``offload``: see the class docstring.
        """
        autoencoder, _ = _import_autoencoder()
        vae = autoencoder.from_pretrained(**component_location(source, "vae"), torch_dtype=dtype)
        target = device if device is not None else default_device()
        return cls(vae, device=target, offload=offload)

    def reset(self) -> None:
        self._feature_cache = None

    @torch.no_grad()
    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Latents ``[B, F, z_dim, H, W]`` -> frames ``[B, T, 3, 8H, 8W]`` in ``[-1, 1]``."""
        _check_latents(latents, self.latent_channels)
        dtype = next(self.vae.parameters()).dtype
        z = latents.to(self.device, torch.float32).transpose(1, 2)
        z = z / self._inverse_std.to(z.device) + self._mean.to(z.device)
        frames = []
        with offloaded(self.vae, self.device, enabled=self.offload):
            x = self.vae.post_quant_conv(z.to(dtype))
            for index in range(x.shape[2]):
                first = self._feature_cache is None
                if first:
                    self._feature_cache = [None] * self._num_cached_convs
                frames.append(
                    self.vae.decoder(
                        x[:, :, index : index + 1],
                        feat_cache=self._feature_cache,
                        feat_idx=[0],
                        first_chunk=first,
                    )
                )
        return torch.cat(frames, dim=2).clamp_(-1.0, 1.0).transpose(1, 2)


class TinyDecoder:
    """Deterministic weight-free decoder: latent channels -> RGB by a fixed random projection.

    Each latent frame gets a colour image ``tanh(W @ z)`` per latent pixel (``W [3, C]`` drawn from
    ``seed``), nearest-upsampled by ``spatial_factor``. In time, the first latent frame of a video
    gives one frame and every later one ``temporal_factor`` frames that blend linearly from the
    previous latent frame's image to its own, so consecutive chunks join without a seam.
    """

    def __init__(
        self,
        latent_channels: int = 16,
        *,
        spatial_factor: int = 8,
        temporal_factor: int = 4,
        seed: int = 0,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.latent_channels = latent_channels
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor
        self.projection = torch.randn(3, latent_channels, generator=generator) / math.sqrt(latent_channels)
        self._previous: Tensor | None = None

    def reset(self) -> None:
        self._previous = None

    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Latents ``[B, F, C, H, W]`` -> float32 frames ``[B, T, 3, s*H, s*W]`` in ``[-1, 1]``."""
        _check_latents(latents, self.latent_channels)
        images = torch.tanh(
            torch.einsum("bfchw,oc->bfohw", latents.float(), self.projection.to(latents.device))
        )
        sequence = images if self._previous is None else torch.cat([self._previous, images], dim=1)
        weights = torch.arange(1, self.temporal_factor + 1, device=images.device) / self.temporal_factor
        blends = torch.lerp(sequence[:, :-1, None], sequence[:, 1:, None], weights.view(1, 1, -1, 1, 1, 1))
        frames = blends.flatten(1, 2)
        if self._previous is None:
            frames = torch.cat([images[:, :1], frames], dim=1)
        self._previous = images[:, -1:]
        factor = self.spatial_factor
        return frames.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
