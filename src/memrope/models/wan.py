"""Causal Wan2.1 DiT driven by a :class:`~memrope.cache.MemRoPECache` (docs/design.md §9).

State-dict names are exactly the official ones, so Self-Forcing / LongLive / Wan2.1 checkpoints load
as they are. Self-attention goes through :func:`memrope.rope_on_the_fly`; cross-attention keys and
values are computed once per prompt (:meth:`CausalWanModel.encode_context`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from memrope.attention import attend, rope_on_the_fly
from memrope.cache import MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.rope import RotaryEmbedding

SINUSOID_BASE = 10000.0


@dataclass(frozen=True)
class WanConfig:
    """Constructor arguments of the Wan DiT; defaults are Wan2.1-T2V-1.3B."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "text_len", "freq_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(
                f"dim must be a multiple of num_heads with an even head_dim, got dim={self.dim}, num_heads={self.num_heads}"
            )
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")
        if len(self.patch_size) != 3 or self.patch_size[0] != 1 or any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be (1, ph, pw) with ph, pw >= 1, got {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WanConfig:
        """Build from a dict such as an official ``config.json``; unknown keys (``model_type``, ...) are ignored."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


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


def sinusoidal_embedding(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Float64 ``[N, dim]`` embedding ``[cos(p * w_i), sin(p * w_i)]``, ``w_i = 10000^(-i/half)``."""
    half = dim // 2
    positions = positions.to(torch.float64).reshape(-1)
    exponents = torch.arange(half, dtype=torch.float64, device=positions.device).div(half)
    angles = torch.outer(positions, torch.pow(SINUSOID_BASE, -exponents))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


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


def self_attention(
    module: Any, x: torch.Tensor, *, cache: MemRoPECache, layer: int, start_frame: int
) -> torch.Tensor:
    """Causal self-attention of ``x`` ``[B, L, dim]`` over the MemRoPE cache (any Wan-like module)."""
    heads, head_dim = module.num_heads, module.head_dim
    query = module.norm_q(module.q(x)).unflatten(-1, (heads, head_dim))
    key = module.norm_k(module.k(x)).unflatten(-1, (heads, head_dim))
    value = module.v(x).unflatten(-1, (heads, head_dim))
    out = rope_on_the_fly(query, key, value, cache=cache, layer=layer, start_frame=start_frame)
    return module.o(out.flatten(2))


def cross_attention(module: Any, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Cross-attention of ``x`` ``[B, L, dim]`` to cached text ``keys``/``values`` ``[B, T, H, D]`` (no mask)."""
    query = module.norm_q(module.q(x)).unflatten(-1, (module.num_heads, module.head_dim))
    return module.o(attend(query, keys, values).flatten(2))


@dataclass(frozen=True)
class CrossAttentionContext:
    """Per-prompt cross-attention keys and values of every block, each ``[B, text_len, H, D]``."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


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
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)


def run_block(
    block: Any,
    x: torch.Tensor,
    modulation: torch.Tensor,
    text_keys: torch.Tensor,
    text_values: torch.Tensor,
    *,
    cache: MemRoPECache,
    layer: int,
    start_frame: int,
) -> torch.Tensor:
    """Apply a Wan block to ``x`` ``[B, F*P, dim]`` with per-frame ``modulation`` ``[B, F, 6, dim]``."""
    frames = modulation.shape[1]
    shift1, scale1, gate1, shift2, scale2, gate2 = (block.modulation.unsqueeze(1) + modulation).chunk(6, dim=2)

    def per_frame(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.unflatten(1, (frames, -1))

    attn_in = (per_frame(block.norm1(x)) * (1 + scale1) + shift1).flatten(1, 2)
    attn_out = self_attention(block.self_attn, attn_in, cache=cache, layer=layer, start_frame=start_frame)
    x = x + (per_frame(attn_out) * gate1).flatten(1, 2)
    x = x + cross_attention(block.cross_attn, block.norm3(x), text_keys, text_values)
    ffn_in = (per_frame(block.norm2(x)) * (1 + scale2) + shift2).flatten(1, 2)
    return x + (per_frame(block.ffn(ffn_in)) * gate2).flatten(1, 2)


class WanHead(nn.Module):
    """Output head: modulated LayerNorm and ``head`` Linear to ``prod(patch) * out_dim`` channels."""

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.norm = LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, math.prod(config.patch_size) * config.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)


def run_head(head: Any, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, F*P, dim]``, ``time_embedding`` ``[B, F, 1, dim]`` -> ``[B, F*P, prod(patch)*out]``."""
    frames = time_embedding.shape[1]
    shift, scale = (head.modulation.unsqueeze(1) + time_embedding).chunk(2, dim=2)
    normed = head.norm(x).unflatten(1, (frames, -1))
    return head.head((normed * (1 + scale) + shift).flatten(1, 2))


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
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
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
        _, patch_h, patch_w = self.config.patch_size
        height, width = latent_hw
        if height % patch_h or width % patch_w:
            raise ValueError(f"latent height/width must be multiples of the patch size {(patch_h, patch_w)}, got {latent_hw}")
        return height // patch_h, width // patch_w

    def new_cache(
        self,
        cache_config: MemRoPEConfig,
        batch_size: int,
        latent_hw: tuple[int, int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        key_workspace: str = "per_layer",
    ) -> MemRoPECache:
        """A cache sized for this model.

        Each layer's state lives on its block's device (models split over devices work as they are)
        unless ``device`` is given; ``dtype`` defaults to the model's.
        """
        weight = self.patch_embedding.weight
        layer_devices = [block.modulation.device if device is None else device for block in self.blocks]
        return MemRoPECache(
            cache_config,
            num_layers=self.config.num_layers,
            batch_size=batch_size,
            num_heads=self.config.num_heads,
            head_dim=self.config.head_dim,
            frame_shape=self.token_grid(latent_hw),
            dtype=weight.dtype if dtype is None else dtype,
            layer_devices=layer_devices,
            rope=RotaryEmbedding(self.config.head_dim, max_positions=cache_config.max_positions),
            key_workspace=key_workspace,  # type: ignore[arg-type]
        )

    def embed_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``[B, L, text_dim]`` to ``text_len`` rows, then the text MLP: ``[B, text_len, dim]``."""
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != self.config.text_dim:
            raise ValueError(f"text_embeds must have shape [B, L, {self.config.text_dim}], got {list(text_embeds.shape)}")
        length = text_embeds.shape[1]
        if length > self.config.text_len:
            raise ValueError(f"text_embeds may have at most text_len={self.config.text_len} tokens, got {length}")
        padding = text_embeds.new_zeros(text_embeds.shape[0], self.config.text_len - length, text_embeds.shape[2])
        weight = cast(nn.Linear, self.text_embedding[0]).weight
        padded = torch.cat([text_embeds, padding], dim=1).to(device=weight.device, dtype=weight.dtype)
        return self.text_embedding(padded)

    def encode_context(self, text_embeds: torch.Tensor) -> CrossAttentionContext:
        """Cross-attention keys/values of every block for text embeddings ``[B, L <= text_len, text_dim]``."""
        embedded = self.embed_text(text_embeds)
        pairs = [block.cross_attn.project_kv(embedded.to(block.cross_attn.k.weight.device)) for block in self.blocks]
        return CrossAttentionContext(tuple(k for k, _ in pairs), tuple(v for _, v in pairs))

    def embed_time(self, timesteps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding ``[B, F, 1, dim]`` and block modulation ``[B, F, 6, dim]`` of ``[B, F]`` timesteps."""
        sinusoid = sinusoidal_embedding(self.config.freq_dim, timesteps.flatten()).to(dtype)
        embedding = self.time_embedding(sinusoid)
        modulation = self.time_projection(embedding).unflatten(1, (6, self.config.dim))
        return embedding.unflatten(0, timesteps.shape).unsqueeze(2), modulation.unflatten(0, timesteps.shape)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, F, C, H, W]`` -> tokens ``[B, F*H'*W', dim]`` in (frame, row, column) order."""
        embedded = self.patch_embedding(latents.transpose(1, 2))
        return embedded.flatten(2).transpose(1, 2)

    def unpatchify(self, tokens: torch.Tensor, frames: int, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, F*H'*W', prod(patch)*out]`` -> ``[B, F, out, H, W]``."""
        _, patch_h, patch_w = self.config.patch_size
        return rearrange(
            tokens,
            "b (f h w) (pf ph pw c) -> b (f pf) c (h ph) (w pw)",
            f=frames, h=grid[0], w=grid[1], pf=1, ph=patch_h, pw=patch_w, c=self.config.out_dim,
        )

    def _check_inputs(self, latents: torch.Tensor, timesteps: torch.Tensor, cache: MemRoPECache) -> None:
        if latents.ndim != 5 or latents.shape[2] != self.config.in_dim:
            raise ValueError(f"latents must have shape [B, F, {self.config.in_dim}, H, W], got {list(latents.shape)}")
        if tuple(timesteps.shape) != tuple(latents.shape[:2]):
            raise ValueError(f"timesteps must have shape [B, F] = {list(latents.shape[:2])}, got {list(timesteps.shape)}")
        if not isinstance(cache, MemRoPECache):
            raise TypeError(f"cache must be a MemRoPECache, got {type(cache).__name__}")
        grid = self.token_grid((latents.shape[3], latents.shape[4]))
        if grid != cache.frame_shape:
            raise ValueError(f"latents of {latents.shape[3]}x{latents.shape[4]} give a {grid} token grid, but the cache was built for {cache.frame_shape}")

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
        """Flow prediction for one chunk.

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
            raise ValueError(f"context batch {context.batch_size} does not match latents batch {latents.shape[0]}")
        frames = latents.shape[1]
        grid = cache.frame_shape
        x = self.patchify(latents.to(self.patch_embedding.weight.dtype))
        time_embedding, modulation = self.embed_time(timesteps, x.dtype)
        for index, block in enumerate(self.blocks):
            device = block.modulation.device
            x = run_block(
                block,
                x.to(device),
                modulation.to(device),
                context.keys[index],
                context.values[index],
                cache=cache,
                layer=index,
                start_frame=start_frame,
            )
        head_device = self.head.modulation.device
        out = run_head(self.head, x.to(head_device), time_embedding.to(head_device))
        return self.unpatchify(out, frames, grid)
