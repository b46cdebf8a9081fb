"""The toy model: a small causal Wan DiT trained on a synthetic world of shapes carried by a current.

* :mod:`memrope.toy.world`: the world (videos generated from a seed), its exact latent code and
  its exact measure.
* :data:`TOY_MODEL_CONFIG`: the DiT's shape (memrope's own :class:`~memrope.models.wan.CausalWanModel`,
  the same blocks and attention as every other model); its weights ship as
  ``memrope/toy/toy_dit.safetensors`` (trained by ``scripts/train_toy.py``) and load through
  :data:`memrope.loading.CHECKPOINTS` ``"toy"``.
* :class:`ToyDecoder`: the weight-free, exact decoder of the toy latents to RGB frames.

The model is unconditional: its cross-attention output projections are zero (and were frozen in
training), so any prompt gives the same video for the same seed. It continues a video, as an
image-to-video model does: the first chunk (3 latent frames) is the world's own, the scene that
:func:`memrope.toy.world.sample_scene` draws from the seed (the toy preset's ``initial_latents`` is
``"toy-world"``, see :func:`memrope.components.make_initial_latents`), and everything after it is
the model's rollout. A first chunk from noise is not learnable by a model that sees only relative
(RoPE) positions: it cannot place a scene's objects and textured background in the frame (see
``scripts/train_toy.py``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from memrope.config import MemRoPEConfig
from memrope.models.wan_config import WanConfig
from memrope.toy.world import LATENT_CHANNELS, LATENT_HW, NATIVE_HW, TEMPORAL_FACTOR, latents_to_frames

__all__ = [
    "TOY_CACHE",
    "TOY_CONTEXT_NOISE",
    "TOY_DECODER_UPSAMPLE",
    "TOY_GIVEN_FRAMES",
    "TOY_LATENT_FRAMES",
    "TOY_LATENT_HW",
    "TOY_MODEL_CONFIG",
    "TOY_WEIGHTS_FILE",
    "ToyDecoder",
    "toy_weights_path",
]

TOY_MODEL_CONFIG = WanConfig(
    dim=128,
    ffn_dim=512,
    num_heads=2,
    num_layers=4,
    in_dim=LATENT_CHANNELS,
    out_dim=LATENT_CHANNELS,
    text_dim=16,
    text_len=8,
    freq_dim=64,
)
TOY_LATENT_HW = LATENT_HW  # 16x24 latents, 128x192 video
#: frame by frame (chunks of 1 latent frame): 12 slots = 3 sink + 2 memory + 6 recent + 1 current
TOY_CACHE = MemRoPEConfig(chunk_frames=1)
#: the timestep (sigma 0.15 on the toy's shift-1 schedule) its own frames are noised to before the
#: cache holds them (``noised_context``; scripts/train_toy.py trains on sigmas 0-0.3)
TOY_CONTEXT_NOISE = 150.0
TOY_GIVEN_FRAMES = 3  # the world's first latent frames every toy video starts from (the sink)
TOY_LATENT_FRAMES = 12  # the trained length (the cache's filling phase): 4 chunks, 45 frames, 2.8 s
TOY_WEIGHTS_FILE = "toy_dit.safetensors"
TOY_DECODER_UPSAMPLE = 4  # native 32x48 frames shown at 128x192 (x8 of the latent grid)


def toy_weights_path() -> Path:
    """Path of the packaged toy DiT weights (``memrope/toy/toy_dit.safetensors``)."""
    return Path(str(resources.files("memrope.toy").joinpath(TOY_WEIGHTS_FILE)))


class ToyDecoder:
    """Streaming decoder of toy latents ``[B, F, 12, 16, 24]`` to frames ``[B, T, 3, 128, 192]``.

    Each latent frame is decoded exactly (2x2 depth-to-space, :func:`memrope.toy.world.latents_to_frames`)
    to the world frame it codes. The first latent frame of a video gives one video frame; every later
    one gives four that blend linearly from the previous latent frame's image to its own (so
    ``T = 4F - 3`` for the first chunk, ``4F`` later, and chunks join without a seam). Frames are
    nearest-upsampled x4 and clamped to ``[-1, 1]``. No weights.
    """

    latent_channels = LATENT_CHANNELS
    temporal_factor = TEMPORAL_FACTOR

    def __init__(self) -> None:
        self._previous: Tensor | None = None

    def reset(self) -> None:
        self._previous = None

    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Latents ``[B, F, 12, 16, 24]`` -> float32 frames ``[B, T, 3, 128, 192]`` in ``[-1, 1]``."""
        if (
            latents.ndim != 5
            or tuple(latents.shape[2:]) != (LATENT_CHANNELS, *LATENT_HW)
            or latents.shape[1] == 0
        ):
            raise ValueError(
                f"expected latents [B, F >= 1, {LATENT_CHANNELS}, {LATENT_HW[0]}, {LATENT_HW[1]}], "
                f"got {tuple(latents.shape)}"
            )
        images = latents_to_frames(latents.float())
        previous = self._previous
        if previous is not None and previous.shape[0] != images.shape[0]:
            raise ValueError(
                f"batch {images.shape[0]} does not continue the video of batch {previous.shape[0]}"
            )
        sequence = images if previous is None else torch.cat([previous, images], dim=1)
        weights = torch.arange(1, TEMPORAL_FACTOR + 1, device=images.device) / TEMPORAL_FACTOR
        blends = torch.lerp(sequence[:, :-1, None], sequence[:, 1:, None], weights.view(1, 1, -1, 1, 1, 1))
        frames = blends.flatten(1, 2)
        if previous is None:
            frames = torch.cat([images[:, :1], frames], dim=1)
        self._previous = images[:, -1:]
        factor = TOY_DECODER_UPSAMPLE
        frames = frames.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
        return frames.clamp(-1.0, 1.0)


def native_frames(frames: Tensor) -> Tensor:
    """Decoded frames ``[B, T, 3, 128, 192]`` back to the world's ``[B, T, 3, 32, 48]`` (mean of each 4x4 block)."""
    factor = TOY_DECODER_UPSAMPLE
    if frames.ndim != 5 or tuple(frames.shape[-2:]) != (NATIVE_HW[0] * factor, NATIVE_HW[1] * factor):
        raise ValueError(
            f"frames must have shape [B, T, 3, {NATIVE_HW[0] * factor}, {NATIVE_HW[1] * factor}], got {list(frames.shape)}"
        )
    batch, count = frames.shape[:2]
    pooled = torch.nn.functional.avg_pool2d(frames.float().flatten(0, 1), factor)
    return pooled.view(batch, count, 3, *NATIVE_HW)
