"""The Wan2.1 causal DiT forward pass, once, on any module tree with the official names (docs/design.md §9).

Every function takes the model (or one of its blocks) as a module tree: ``patch_embedding``,
``text_embedding``, ``time_embedding``, ``time_projection``, ``blocks[i].{modulation, norm1,
self_attn, norm3, cross_attn, norm2, ffn}`` and ``head.{modulation, norm, head}``, each
attention with ``q, k, v, o, norm_q, norm_k``. They call those modules as they are (a LoRA-wrapped
Linear computes its own delta; nothing is copied) and read sizes from a :class:`WanConfig`
(:meth:`WanConfig.from_module` for a foreign model). :class:`~memrope.models.wan.CausalWanModel`
and the upstream adapter both run :func:`wan_forward`; self-attention goes through
:func:`memrope.rope_on_the_fly` and the :class:`~memrope.cache.MemRoPECache`.

Each layer runs on the device of its block's ``modulation`` (a model split over devices works as
it is); activations move there block by block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from memrope.attention import AttentionFn, attend, rope_on_the_fly
from memrope.cache import MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.models.wan_config import WanConfig
from memrope.rope import RotaryEmbedding

__all__ = [
    "SINUSOID_BASE",
    "CrossAttentionContext",
    "cross_attention",
    "embed_patches",
    "embed_text",
    "embed_time",
    "encode_text",
    "new_wan_cache",
    "pad_text",
    "run_block",
    "run_blocks",
    "run_head",
    "self_attention",
    "sinusoidal_embedding",
    "token_grid",
    "unpatchify",
    "wan_forward",
]

SINUSOID_BASE = 10000.0


@dataclass(frozen=True)
class CrossAttentionContext:
    """Per-prompt cross-attention keys and values of every block, each ``[B, text_len, H, D]``."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


def _weight(module: Any) -> torch.Tensor:
    """The weight of a layer, of its ``base_layer`` when LoRA-wrapped."""
    return getattr(module, "base_layer", module).weight  # type: ignore[no-any-return]


def _device(module: Any) -> torch.device:
    """Where a block or the head runs: the device of its ``modulation``."""
    return module.modulation.device  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------ geometry
def token_grid(config: WanConfig, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Token grid ``(H', W')`` of a latent frame of size ``latent_hw`` = ``(H, W)``."""
    _, patch_h, patch_w = config.patch_size
    height, width = latent_hw
    if height % patch_h or width % patch_w:
        raise ValueError(
            f"latent height/width must be multiples of the patch size {(patch_h, patch_w)}, got {tuple(latent_hw)}"
        )
    return height // patch_h, width // patch_w


def new_wan_cache(
    config: WanConfig,
    cache_config: MemRoPEConfig,
    batch_size: int,
    grid: tuple[int, int],
    *,
    dtype: torch.dtype,
    layer_devices: Sequence[torch.device | str],
    key_workspace: Literal["per_layer", "shared"] = "per_layer",
    kv_dtype: torch.dtype | str | None = None,
) -> MemRoPECache:
    """A :class:`MemRoPECache` for a Wan DiT of ``config``: one layer per block, token ``grid`` per frame.

    ``kv_dtype`` (``None``, ``torch.float8_e4m3fn``, ``torch.float8_e5m2``, ``torch.int8``) stores the
    cached keys and values in 8 bits (see :class:`MemRoPECache`).
    """
    return MemRoPECache(
        cache_config,
        num_layers=config.num_layers,
        batch_size=batch_size,
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        frame_shape=grid,
        dtype=dtype,
        layer_devices=list(layer_devices),
        rope=RotaryEmbedding(config.head_dim, max_positions=cache_config.max_positions),
        key_workspace=key_workspace,
        kv_dtype=kv_dtype,
    )


# ---------------------------------------------------------------------------------- embeddings
def embed_patches(model: Any, video: torch.Tensor) -> torch.Tensor:
    """``patch_embedding`` of ``video`` ``[B, C, F, H, W]`` (cast to its dtype): tokens ``[B, F*H'*W', dim]``.

    Tokens are in (frame, row, column) order.
    """
    patch = model.patch_embedding
    return patch(video.to(_weight(patch).dtype)).flatten(2).transpose(1, 2)  # type: ignore[no-any-return]


def sinusoidal_embedding(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Float64 ``[N, dim]`` embedding ``[cos(p * w_i), sin(p * w_i)]``, ``w_i = 10000^(-i/half)``."""
    half = dim // 2
    positions = positions.to(torch.float64).reshape(-1)
    exponents = torch.arange(half, dtype=torch.float64, device=positions.device).div(half)
    angles = torch.outer(positions, torch.pow(SINUSOID_BASE, -exponents))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def embed_time(
    model: Any, timesteps: torch.Tensor, dtype: torch.dtype, config: WanConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time embedding ``[B, F, 1, dim]`` and block modulation ``[B, F, 6, dim]`` of ``[B, F]`` timesteps.

    The sinusoid is computed in float64, cast to ``dtype`` and put through ``time_embedding``;
    ``time_projection`` of that gives the six modulation vectors per frame.
    """
    sinusoid = sinusoidal_embedding(config.freq_dim, timesteps.flatten()).to(dtype)
    sinusoid = sinusoid.to(_weight(model.time_embedding[0]).device)
    embedding = model.time_embedding(sinusoid)
    modulation = model.time_projection(embedding).unflatten(1, (6, config.dim))
    return embedding.unflatten(0, timesteps.shape).unsqueeze(2), modulation.unflatten(0, timesteps.shape)


def pad_text(
    text: torch.Tensor | Sequence[torch.Tensor], config: WanConfig, *, argument: str = "text"
) -> torch.Tensor:
    """Zero-pad prompt embeddings to ``text_len`` rows: ``[B, text_len, text_dim]``.

    ``text``: a tensor ``[B, L <= text_len, text_dim]`` or a list of ``[L_i <= text_len, text_dim]``
    tensors (the upstream form); ``argument`` names it in errors.
    """
    limit, width = config.text_len, config.text_dim
    if isinstance(text, torch.Tensor):
        if text.ndim != 3 or text.shape[-1] != width or text.shape[1] > limit:
            raise ValueError(f"{argument} must have shape [B, L <= {limit}, {width}], got {list(text.shape)}")
        padding = text.new_zeros(text.shape[0], limit - text.shape[1], text.shape[2])
        return torch.cat([text, padding], dim=1)
    if isinstance(text, Sequence) and text and all(isinstance(item, torch.Tensor) for item in text):
        rows = []
        for item in text:
            if item.ndim != 2 or item.shape[-1] != width or item.shape[0] > limit:
                raise ValueError(
                    f"each {argument} item must be [L <= {limit}, {width}], got {list(item.shape)}"
                )
            rows.append(torch.cat([item, item.new_zeros(limit - item.shape[0], item.shape[1])]))
        return torch.stack(rows)
    raise ValueError(
        f"{argument} must be a tensor [B, L, {width}] or a non-empty list of [L, {width}] tensors, got {type(text).__name__}"
    )


def embed_text(
    model: Any, text: torch.Tensor | Sequence[torch.Tensor], config: WanConfig, *, argument: str = "text"
) -> torch.Tensor:
    """:func:`pad_text`, then ``text_embedding`` (in its dtype, on its device): ``[B, text_len, dim]``."""
    weight = _weight(model.text_embedding[0])
    padded = pad_text(text, config, argument=argument)
    return model.text_embedding(padded.to(device=weight.device, dtype=weight.dtype))  # type: ignore[no-any-return]


def encode_text(
    model: Any, text: torch.Tensor | Sequence[torch.Tensor], config: WanConfig, *, argument: str = "text"
) -> CrossAttentionContext:
    """Cross-attention keys and values ``[B, text_len, H, D]`` of every block (no RoPE, padding included)."""
    embedded = embed_text(model, text, config, argument=argument)
    keys, values = [], []
    for block in model.blocks:
        attention = block.cross_attn
        source = embedded.to(_device(block))
        keys.append(attention.norm_k(attention.k(source)).unflatten(-1, (config.num_heads, config.head_dim)))
        values.append(attention.v(source).unflatten(-1, (config.num_heads, config.head_dim)))
    return CrossAttentionContext(tuple(keys), tuple(values))


# -------------------------------------------------------------------------------------- blocks
def self_attention(
    module: Any,
    x: torch.Tensor,
    *,
    cache: MemRoPECache,
    layer: int,
    start_frame: int,
    attention: AttentionFn = attend,
) -> torch.Tensor:
    """Causal self-attention of ``x`` ``[B, L, dim]`` over the MemRoPE cache (heads as the cache's).

    ``attention`` is the kernel ``(q, k, v) -> out`` on ``[B, L, H, D]`` that
    :func:`~memrope.attention.rope_on_the_fly` runs (default :func:`~memrope.attention.attend`).
    """
    heads, head_dim = cache.num_heads, cache.head_dim
    query = module.norm_q(module.q(x)).unflatten(-1, (heads, head_dim))
    key = module.norm_k(module.k(x)).unflatten(-1, (heads, head_dim))
    value = module.v(x).unflatten(-1, (heads, head_dim))
    out = rope_on_the_fly(
        query, key, value, cache=cache, layer=layer, start_frame=start_frame, attention=attention
    )
    return module.o(out.flatten(2))  # type: ignore[no-any-return]


def cross_attention(module: Any, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Cross-attention of ``x`` ``[B, L, dim]`` to cached text ``keys``/``values`` ``[B, T, H, D]`` (no mask)."""
    query = module.norm_q(module.q(x)).unflatten(-1, tuple(keys.shape[-2:]))
    return module.o(attend(query, keys, values).flatten(2))  # type: ignore[no-any-return]


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
    attention: AttentionFn = attend,
) -> torch.Tensor:
    """Apply a Wan block to ``x`` ``[B, F*P, dim]`` with per-frame ``modulation`` ``[B, F, 6, dim]``.

    ``attention``: the self-attention kernel (see :func:`self_attention`).
    """
    frames = modulation.shape[1]
    shift1, scale1, gate1, shift2, scale2, gate2 = (block.modulation.unsqueeze(1) + modulation).chunk(
        6, dim=2
    )

    def per_frame(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.unflatten(1, (frames, -1))

    attn_in = (per_frame(block.norm1(x)) * (1 + scale1) + shift1).flatten(1, 2)
    attn_out = self_attention(
        block.self_attn, attn_in, cache=cache, layer=layer, start_frame=start_frame, attention=attention
    )
    x = x + (per_frame(attn_out) * gate1).flatten(1, 2)
    x = x + cross_attention(block.cross_attn, block.norm3(x), text_keys, text_values)
    ffn_in = (per_frame(block.norm2(x)) * (1 + scale2) + shift2).flatten(1, 2)
    return x + (per_frame(block.ffn(ffn_in)) * gate2).flatten(1, 2)


def run_blocks(
    model: Any,
    tokens: torch.Tensor,
    modulation: torch.Tensor,
    context: CrossAttentionContext,
    *,
    cache: MemRoPECache,
    start_frame: int,
    attention: AttentionFn = attend,
) -> torch.Tensor:
    """Every block in turn on ``tokens`` ``[B, F*P, dim]``, each on its own device; cache layer ``i`` is block ``i``.

    ``attention``: the self-attention kernel of every block (see :func:`self_attention`).
    """
    for index, block in enumerate(model.blocks):
        device = _device(block)
        tokens = run_block(
            block,
            tokens.to(device),
            modulation.to(device),
            context.keys[index],
            context.values[index],
            cache=cache,
            layer=index,
            start_frame=start_frame,
            attention=attention,
        )
    return tokens


# ---------------------------------------------------------------------------------------- head
def run_head(head: Any, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, F*P, dim]``, ``time_embedding`` ``[B, F, 1, dim]`` -> ``[B, F*P, prod(patch)*out]``."""
    frames = time_embedding.shape[1]
    shift, scale = (head.modulation.unsqueeze(1) + time_embedding).chunk(2, dim=2)
    normed = head.norm(x).unflatten(1, (frames, -1))
    return head.head((normed * (1 + scale) + shift).flatten(1, 2))  # type: ignore[no-any-return]


def unpatchify(
    tokens: torch.Tensor,
    frames: int,
    grid: tuple[int, int],
    config: WanConfig,
    *,
    channels_first: bool = False,
) -> torch.Tensor:
    """``[B, F*H'*W', prod(patch)*out]`` -> ``[B, F, out, H, W]`` (``[B, out, F, H, W]`` if ``channels_first``).

    A new contiguous tensor either way.
    """
    _, patch_h, patch_w = config.patch_size
    rows, columns = grid
    patches = tokens.reshape(tokens.shape[0], frames, rows, columns, patch_h, patch_w, config.out_dim)
    if channels_first:
        order, shape = (0, 6, 1, 2, 4, 3, 5), (tokens.shape[0], config.out_dim, frames)
    else:
        order, shape = (0, 1, 6, 2, 4, 3, 5), (tokens.shape[0], frames, config.out_dim)
    return patches.permute(order).reshape(*shape, rows * patch_h, columns * patch_w)


# ------------------------------------------------------------------------------------- forward
def wan_forward(
    model: Any,
    video: torch.Tensor,
    timesteps: torch.Tensor,
    context: CrossAttentionContext,
    *,
    cache: MemRoPECache,
    start_frame: int,
    config: WanConfig,
    channels_first: bool = False,
    attention: AttentionFn = attend,
) -> torch.Tensor:
    """Flow prediction of one chunk through a Wan DiT module tree.

    Args:
        model: the module tree (official names; see the module docstring).
        video: noisy latents ``[B, C, F, H, W]`` of frames ``start_frame .. start_frame+F-1``.
        timesteps: per-frame timesteps ``[B, F]``.
        context: :func:`encode_text` of the prompt.
        cache: the self-attention cache, built for this model's heads and the latents' token grid.
        start_frame: global latent frame of the chunk's first frame.
        config: the model's sizes (:meth:`WanConfig.from_module`).
        channels_first: return ``[B, C, F, H, W]`` (the upstream layout) instead of ``[B, F, C, H, W]``.
        attention: the self-attention kernel ``(q, k, v) -> out`` on ``[B, L, H, D]`` (default
            :func:`~memrope.attention.attend`, unmasked softmax over what ``cache`` returns); a
            training script passes a masked kernel with a cache stand-in (``scripts/train_toy.py``).

    Returns:
        the flow prediction in the dtype of the model's ``head``.
    """
    frames = video.shape[2]
    tokens = embed_patches(model, video)
    time_embedding, modulation = embed_time(model, timesteps, tokens.dtype, config)
    tokens = run_blocks(
        model, tokens, modulation, context, cache=cache, start_frame=start_frame, attention=attention
    )
    head_device = _device(model.head)
    out = run_head(model.head, tokens.to(head_device), time_embedding.to(head_device))
    return unpatchify(out, frames, cache.frame_shape, config, channels_first=channels_first)
