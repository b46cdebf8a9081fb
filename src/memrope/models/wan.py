"""Causal Wan2.1 DiT driven by a :class:`~memrope.cache.MemRoPECache` (docs/design.md §9).

State-dict names are exactly the official ones, so Self-Forcing / LongLive / Wan2.1 checkpoints load
as they are. The forward pass itself is :func:`memrope.models.wan_forward.wan_forward`, which runs on
any module tree with these names (the upstream adapter runs the same functions on upstream models);
this module holds the modules and the checks of :meth:`CausalWanModel.forward`. Cross-attention keys
and values are computed once per prompt (:meth:`CausalWanModel.encode_context`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from memrope.cache import MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.models.wan_config import WanConfig
from memrope.models.wan_forward import (
    SINUSOID_BASE,
    CrossAttentionContext,
    cross_attention,
    embed_patches,
    embed_text,
    embed_time,
    encode_text,
    new_wan_cache,
    run_block,
    run_head,
    self_attention,
    sinusoidal_embedding,
    token_grid,
    unpatchify,
    wan_forward,
)

__all__ = [
    "SINUSOID_BASE",
    "CausalWanModel",
    "CrossAttentionContext",
    "LayerNorm",
    "RMSNorm",
    "WanAttention",
    "WanAttentionBlock",
    "WanConfig",
    "WanHead",
    "cross_attention",
    "run_block",
    "run_head",
    "self_attention",
    "sinusoidal_embedding",
]


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32, with a learned ``weight`` ``[dim]``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.float()
        normed = values * torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (affine parameters included) and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class WanAttention(nn.Module):
    """Projections of a Wan attention module: ``q, k, v, o`` and ``norm_q, norm_k`` over the whole dim."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q: nn.Module = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k: nn.Module = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, dim]`` -> ``[B, L, H, D]``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values ``[B, L, H, D]`` of ``source`` ``[B, L, dim]``."""
        return self.split_heads(self.norm_k(self.k(source))), self.split_heads(self.v(source))


class WanAttentionBlock(nn.Module):
    """One DiT block: modulated self-attention, cross-attention, modulated FFN (docs/design.md §9)."""

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim = config.dim
        self.norm1 = LayerNorm(dim, config.eps, elementwise_affine=False)
        self.self_attn = WanAttention(dim, config.num_heads, config.qk_norm, config.eps)
        self.norm3: nn.Module = (
            LayerNorm(dim, config.eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        )
        self.cross_attn = WanAttention(dim, config.num_heads, config.qk_norm, config.eps)
        self.norm2 = LayerNorm(dim, config.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)


class WanHead(nn.Module):
    """Output head: modulated LayerNorm and ``head`` Linear to ``prod(patch) * out_dim`` channels."""

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.norm = LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, math.prod(config.patch_size) * config.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)


class CausalWanModel(nn.Module):
    """Autoregressive Wan2.1 text-to-video DiT with a MemRoPE self-attention cache."""

    #: The top-level modules in forward order, for :mod:`memrope.devices` (as diffusers'
    #: ``_no_split_modules``): those before the block list go on the first device, ``"blocks.*"``
    #: (every entry of ``self.blocks``) is split over the devices, those after it go on the last one.
    _placeable_modules: ClassVar[tuple[str, ...]] = (
        "patch_embedding",
        "text_embedding",
        "time_embedding",
        "time_projection",
        "blocks.*",
        "head",
    )

    def __init__(self, config: WanConfig | None = None) -> None:
        super().__init__()
        config = config or WanConfig()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(
            config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks: Sequence[WanAttentionBlock] = nn.ModuleList(  # type: ignore[assignment]
            [WanAttentionBlock(config) for _ in range(config.num_layers)]
        )
        self.head = WanHead(config)

    # ------------------------------------------------------------------ helpers
    def token_grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(H', W')`` of a latent frame of size ``latent_hw``."""
        return token_grid(self.config, latent_hw)

    def new_cache(
        self,
        cache_config: MemRoPEConfig,
        batch_size: int,
        latent_hw: tuple[int, int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        key_workspace: Literal["per_layer", "shared"] | None = None,
        kv_dtype: torch.dtype | str | None = None,
    ) -> MemRoPECache:
        """A cache sized for this model.

        Each layer's state lives on its block's device (models split over devices work as they are)
        unless ``device`` is given; ``dtype`` defaults to the model's. ``kv_dtype`` stores the cached
        keys and values in 8 bits (``torch.float8_e4m3fn``, ``torch.float8_e5m2``, ``torch.int8``;
        ``None``: in ``dtype``) and ``key_workspace`` is ``"per_layer"`` (``None``, the default) or
        ``"shared"``, see :class:`~memrope.cache.MemRoPECache`.
        """
        weight = self.patch_embedding.weight
        return new_wan_cache(
            self.config,
            cache_config,
            batch_size,
            self.token_grid(latent_hw),
            dtype=weight.dtype if dtype is None else dtype,
            layer_devices=[block.modulation.device if device is None else device for block in self.blocks],
            key_workspace="per_layer" if key_workspace is None else key_workspace,
            kv_dtype=kv_dtype,
        )

    def embed_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``[B, L, text_dim]`` to ``text_len`` rows, then the text MLP: ``[B, text_len, dim]``."""
        return embed_text(self, text_embeds, self.config, argument="text_embeds")

    def encode_context(self, text_embeds: torch.Tensor) -> CrossAttentionContext:
        """Cross-attention keys/values of every block for text embeddings ``[B, L <= text_len, text_dim]``."""
        return encode_text(self, text_embeds, self.config, argument="text_embeds")

    def embed_time(self, timesteps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding ``[B, F, 1, dim]`` and block modulation ``[B, F, 6, dim]`` of ``[B, F]`` timesteps."""
        return embed_time(self, timesteps, dtype, self.config)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, F, C, H, W]`` -> tokens ``[B, F*H'*W', dim]`` in (frame, row, column) order."""
        return embed_patches(self, latents.transpose(1, 2))

    def unpatchify(self, tokens: torch.Tensor, frames: int, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, F*H'*W', prod(patch)*out]`` -> ``[B, F, out, H, W]``."""
        return unpatchify(tokens, frames, grid, self.config)

    def _check_inputs(self, latents: torch.Tensor, timesteps: torch.Tensor, cache: MemRoPECache) -> None:
        if latents.ndim != 5 or latents.shape[2] != self.config.in_dim:
            raise ValueError(
                f"latents must have shape [B, F, {self.config.in_dim}, H, W], got {list(latents.shape)}"
            )
        if tuple(timesteps.shape) != tuple(latents.shape[:2]):
            raise ValueError(
                f"timesteps must have shape [B, F] = {list(latents.shape[:2])}, got {list(timesteps.shape)}"
            )
        if not isinstance(cache, MemRoPECache):
            raise TypeError(f"cache must be a MemRoPECache, got {type(cache).__name__}")
        grid = self.token_grid((latents.shape[3], latents.shape[4]))
        if grid != cache.frame_shape:
            raise ValueError(
                f"latents of {latents.shape[3]}x{latents.shape[4]} give a {grid} token grid, but the cache was built for {cache.frame_shape}"
            )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: CrossAttentionContext | torch.Tensor,
        *,
        cache: MemRoPECache,
        start_frame: int,
    ) -> torch.Tensor:
        """Flow prediction for one chunk (:func:`memrope.models.wan_forward.wan_forward`).

        Args:
            latents: noisy latents ``[B, F, C, H, W]`` of frames ``start_frame .. start_frame+F-1``.
            timesteps: per-frame timesteps ``[B, F]``.
            context: :meth:`encode_context` output, or raw text embeddings ``[B, L, text_dim]``.
            cache: the self-attention cache (advanced on the first call of a chunk).
            start_frame: global latent frame of the chunk's first frame.

        Returns:
            the flow prediction ``[B, F, C, H, W]`` in the model dtype.
        """
        self._check_inputs(latents, timesteps, cache)
        if isinstance(context, torch.Tensor):
            context = self.encode_context(context)
        if context.batch_size != latents.shape[0]:
            raise ValueError(
                f"context batch {context.batch_size} does not match latents batch {latents.shape[0]}"
            )
        return wan_forward(
            self,
            latents.transpose(1, 2),
            timesteps,
            context,
            cache=cache,
            start_frame=start_frame,
            config=self.config,
        )
