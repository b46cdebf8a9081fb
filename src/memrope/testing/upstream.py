"""Small stand-ins for the upstream objects the drop-in adapter must fit.

They reproduce the module tree, call signatures and per-block cache-list protocol of the causal Wan
model, the ``WanDiffusionWrapper`` and the ``CausalInferencePipeline`` of Self-Forcing, LongLive and
the official MemRoPE code, at any (tiny) size. Their own attention is a plain sink + FIFO cache that
stores keys with RoPE at absolute positions (Self-Forcing style). Variants:

* ``"self_forcing"``: attention writes the cache immediately and returns ``x``; the pipeline
  allocates its caches once and resets them by re-assigning the end indices.
* ``"longlive"``: attention returns ``(x, update)`` and the model commits after all blocks; the
  model sits inside a PEFT-like wrapper (``generator.model.base_model.model``) that forwards unknown
  attributes to it, as PEFT does, and whose Linear layers are LoRA-wrapped (``base_layer``,
  ``lora_A``, ``lora_B``); caches re-allocated per video.
* ``"official"``: like LongLive without LoRA, but the wrapper passes ``kv_cache=True`` and the
  pipeline keeps the lists on the model (``_kv_cache_attr``, ``_crossattn_cache_attr``). Its attention
  modules and ``pipeline.args.model_kwargs`` hold the official cache settings
  (``compression_method``, ``ema_alpha_long``, ``ema_alpha_short``, ``ema_adaptive``,
  ``local_attn_size``, ``sink_size``), which the stand-in's own attention does not use.

Pipeline shapes (:func:`build_pipeline`'s ``pipeline_class``): the plain chunk loop (optionally with
Self-Forcing's 1-frame first block, ``independent_first_frame``), LongLive's interactive pipeline
whose prompt switch re-caches up to ``local_attn_size`` frames in one call, and Self-Forcing's
classifier-free-guidance ``CausalDiffusionInferencePipeline`` with two caches (``kv_cache_pos`` /
``kv_cache_neg``).

Parameter names are the official ones, so ``CausalWanModel`` state dicts load as they are. The
wrapper and pipeline stand-ins live in :mod:`memrope.testing.upstream_pipelines`; this module
re-exports them.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memrope.testing.upstream_pipelines import (
    NUM_TRAIN_TIMESTEPS,
    PIPELINE_CLASSES,
    CausalDiffusionInferencePipelineStandin,
    CausalInferencePipelineStandin,
    InteractiveCausalInferencePipelineStandin,
    WanDiffusionWrapperStandin,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "PIPELINE_CLASSES",
    "SMALL_MODEL",
    "VARIANTS",
    "BlockStandin",
    "CausalDiffusionInferencePipelineStandin",
    "CausalInferencePipelineStandin",
    "CausalWanStandin",
    "CrossAttentionStandin",
    "HeadStandin",
    "InteractiveCausalInferencePipelineStandin",
    "LayerNormStandin",
    "LoraLinearStandin",
    "LoraModelStandin",
    "PeftModelStandin",
    "RMSNormStandin",
    "SelfAttentionStandin",
    "WanDiffusionWrapperStandin",
    "build_pipeline",
    "inject_lora",
    "merged_state_dict",
    "rope_at",
    "rope_frequencies",
    "sinusoid",
]

VARIANTS = ("self_forcing", "longlive", "official")
#: A small stand-in shape (``build_pipeline(variant, SMALL_MODEL)``) that runs in milliseconds on a CPU.
SMALL_MODEL: dict[str, int] = {
    "dim": 64,
    "ffn_dim": 128,
    "num_heads": 2,
    "num_layers": 2,
    "in_dim": 4,
    "out_dim": 4,
    "text_dim": 24,
    "text_len": 8,
    "freq_dim": 32,
}


# ------------------------------------------------------------------------------------ layers
class RMSNormStandin(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.float()
        return (values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(
            x
        ) * self.weight


class LayerNormStandin(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


def _rope_table(positions: int, channels: int) -> torch.Tensor:
    """Complex ``[positions, channels/2]`` table ``exp(i * p * 10000^(-2j/channels))`` in float64."""
    inverse = 1.0 / torch.pow(10000.0, torch.arange(0, channels, 2, dtype=torch.float64) / channels)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), inverse)
    return torch.polar(torch.ones_like(angles), angles)


def rope_frequencies(head_dim: int, positions: int = 1024) -> torch.Tensor:
    """Wan's 3-axis table ``[positions, head_dim/2]``: temporal, height, width parts side by side."""
    spatial = 2 * (head_dim // 6)
    return torch.cat(
        [
            _rope_table(positions, head_dim - 2 * spatial),
            _rope_table(positions, spatial),
            _rope_table(positions, spatial),
        ],
        dim=1,
    )


def rope_at(
    x: torch.Tensor, grid: tuple[int, int, int], freqs: torch.Tensor, start_frame: int
) -> torch.Tensor:
    """RoPE on ``x [B, f*h*w, n, d]`` with absolute temporal positions ``start_frame ..``."""
    batch, length, heads, head_dim = x.shape
    pairs = head_dim // 2
    frames, height, width = grid
    temporal, rows, cols = freqs.split([pairs - 2 * (pairs // 3), pairs // 3, pairs // 3], dim=1)
    table = torch.cat(
        [
            temporal[start_frame : start_frame + frames]
            .view(frames, 1, 1, -1)
            .expand(frames, height, width, -1),
            rows[:height].view(1, height, 1, -1).expand(frames, height, width, -1),
            cols[:width].view(1, 1, width, -1).expand(frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(length, 1, -1)
    rotated = torch.view_as_complex(x.double().reshape(batch, length, heads, -1, 2)) * table
    return torch.view_as_real(rotated).flatten(3).type_as(x)


def sinusoid(dim: int, positions: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    positions = positions.double()
    angles = torch.outer(positions, torch.pow(10000.0, -torch.arange(half, dtype=torch.float64).div(half)))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class SelfAttentionStandin(nn.Module):
    """Sink + FIFO causal self-attention over an upstream cache dict, keys stored with RoPE."""

    def __init__(self, dim: int, num_heads: int, eps: float, sink_size: int, deferred: bool) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.sink_size = sink_size
        self.deferred = deferred
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNormStandin(dim, eps)
        self.norm_k = RMSNormStandin(dim, eps)

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int, int],
        freqs: torch.Tensor,
        kv_cache: dict,
        current_start: int,
    ) -> Any:
        batch, length = x.shape[:2]
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.norm_q(self.q(x)).view(shape)
        k = self.norm_k(self.k(x)).view(shape)
        v = self.v(x).view(shape)
        frame_seqlen = grid[1] * grid[2]
        start_frame = current_start // frame_seqlen
        roped_q, roped_k = rope_at(q, grid, freqs, start_frame), rope_at(k, grid, freqs, start_frame)
        global_end = int(kv_cache["global_end_index"].item())
        local_end = int(kv_cache["local_end_index"].item())
        keys, values = kv_cache["k"], kv_cache["v"]
        if self.deferred:
            keys, values = keys.clone(), values.clone()
        size, sink = keys.shape[1], self.sink_size * frame_seqlen
        current_end = current_start + length
        if current_end > global_end:
            new_tokens = current_end - global_end
            if local_end + new_tokens > size:
                evicted = local_end + new_tokens - size
                kept = local_end - evicted - sink
                keys[:, sink : sink + kept] = keys[:, sink + evicted : sink + evicted + kept].clone()
                values[:, sink : sink + kept] = values[:, sink + evicted : sink + evicted + kept].clone()
                new_local_end = size
            else:
                new_local_end = local_end + new_tokens
        else:
            new_local_end = local_end - (global_end - current_end)
        keys[:, new_local_end - length : new_local_end] = roped_k
        values[:, new_local_end - length : new_local_end] = v
        out = F.scaled_dot_product_attention(
            roped_q.transpose(1, 2),
            keys[:, :new_local_end].transpose(1, 2),
            values[:, :new_local_end].transpose(1, 2),
        ).transpose(1, 2)
        out = self.o(out.flatten(2))
        if self.deferred:
            return out, (keys, values, current_end, new_local_end)
        kv_cache["global_end_index"].fill_(current_end)
        kv_cache["local_end_index"].fill_(new_local_end)
        return out


class CrossAttentionStandin(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNormStandin(dim, eps)
        self.norm_k = RMSNormStandin(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, crossattn_cache: dict | None) -> torch.Tensor:
        batch = x.shape[0]
        q = self.norm_q(self.q(x)).view(batch, -1, self.num_heads, self.head_dim)
        if crossattn_cache is None or not bool(crossattn_cache["is_init"]):
            k = self.norm_k(self.k(context)).view(batch, -1, self.num_heads, self.head_dim)
            v = self.v(context).view(batch, -1, self.num_heads, self.head_dim)
            if crossattn_cache is not None:
                crossattn_cache["k"], crossattn_cache["v"] = k, v
                if isinstance(crossattn_cache["is_init"], torch.Tensor):
                    crossattn_cache["is_init"].fill_(True)
                else:
                    crossattn_cache["is_init"] = True
        else:
            k, v = crossattn_cache["k"], crossattn_cache["v"]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)
        return self.o(out.flatten(2))


class BlockStandin(nn.Module):
    def __init__(
        self, dim: int, ffn_dim: int, num_heads: int, eps: float, sink_size: int, deferred: bool
    ) -> None:
        super().__init__()
        self.norm1 = LayerNormStandin(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttentionStandin(dim, num_heads, eps, sink_size, deferred)
        self.norm3 = LayerNormStandin(dim, eps, elementwise_affine=True)
        self.cross_attn = CrossAttentionStandin(dim, num_heads, eps)
        self.norm2 = LayerNormStandin(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        grid: tuple[int, int, int],
        freqs: torch.Tensor,
        context: torch.Tensor,
        kv_cache: dict[str, Any],
        crossattn_cache: dict[str, Any] | None,
        current_start: int,
    ) -> Any:
        frames = e.shape[1]
        mod = (self.modulation.unsqueeze(1) + e).chunk(6, dim=2)

        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(1, (frames, -1))

        result = self.self_attn(
            (per_frame(self.norm1(x)) * (1 + mod[1]) + mod[0]).flatten(1, 2),
            grid,
            freqs,
            kv_cache,
            current_start,
        )
        update = None
        if isinstance(result, tuple):
            result, update = result
        x = x + (per_frame(result) * mod[2]).flatten(1, 2)
        x = x + self.cross_attn(self.norm3(x), context, crossattn_cache)
        y = self.ffn((per_frame(self.norm2(x)) * (1 + mod[4]) + mod[3]).flatten(1, 2))
        x = x + (per_frame(y) * mod[5]).flatten(1, 2)
        return x if update is None else (x, update)


class HeadStandin(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        self.norm = LayerNormStandin(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        frames = e.shape[1]
        shift, scale = (self.modulation.unsqueeze(1) + e).chunk(2, dim=2)
        return self.head((self.norm(x).unflatten(1, (frames, -1)) * (1 + scale) + shift).flatten(1, 2))


# ------------------------------------------------------------------------------------ model
class CausalWanStandin(nn.Module):
    """Upstream-shaped causal Wan DiT: ``forward(x, t, context, seq_len, ..., kv_cache, crossattn_cache, current_start)``."""

    def __init__(
        self,
        *,
        dim: int = 64,
        ffn_dim: int = 128,
        num_heads: int = 2,
        num_layers: int = 2,
        in_dim: int = 4,
        out_dim: int = 4,
        text_dim: int = 24,
        text_len: int = 8,
        freq_dim: int = 32,
        patch_size: tuple[int, int, int] | list[int] = (1, 2, 2),
        eps: float = 1e-6,
        local_attn_size: int = 12,
        sink_size: int = 3,
        variant: str = "self_forcing",
        compression_method: str = "ema",
        ema_alpha_long: float = 0.01,
        ema_alpha_short: float = 0.1,
        ema_adaptive: bool = False,
        **_: Any,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(variant)
        self.variant = variant
        self.dim, self.ffn_dim, self.num_heads, self.num_layers = dim, ffn_dim, num_heads, num_layers
        self.in_dim, self.out_dim, self.text_dim, self.text_len, self.freq_dim = (
            in_dim,
            out_dim,
            text_dim,
            text_len,
            freq_dim,
        )
        self.patch_size = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        self.eps = eps
        self.local_attn_size, self.sink_size = local_attn_size, sink_size
        self.num_frame_per_block = 1
        deferred = variant != "self_forcing"
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            BlockStandin(dim, ffn_dim, num_heads, eps, sink_size, deferred) for _ in range(num_layers)
        )
        block: Any
        for block in self.blocks:
            block.self_attn.local_attn_size = local_attn_size
            if (
                variant == "official"
            ):  # the official modules hold the cache settings; this attention ignores them
                block.self_attn.compression_method = compression_method
                block.self_attn.ema_alpha_long = ema_alpha_long
                block.self_attn.ema_alpha_short = ema_alpha_short
                block.self_attn.ema_adaptive = ema_adaptive
        self.head = HeadStandin(dim, out_dim, self.patch_size, eps)
        self.freqs = rope_frequencies(dim // num_heads)  # a plain attribute, like upstream

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.variant == "official" and kwargs.get("kv_cache") is True:
            kwargs["kv_cache"] = self._kv_cache_attr
            kwargs["crossattn_cache"] = self._crossattn_cache_attr
        return self._forward_inference(*args, **kwargs)

    def _forward_inference(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        seq_len: int,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        kv_cache: list[dict[str, Any]] | None = None,
        crossattn_cache: list[Any] | None = None,
        current_start: int = 0,
        cache_start: int | None = None,
        block_mask: Any = None,
    ) -> torch.Tensor:
        embedded = [self.patch_embedding(u.unsqueeze(0)) for u in x]
        frames, height, width = (int(n) for n in embedded[0].shape[2:])
        grid = (frames, height, width)
        tokens = torch.cat([u.flatten(2).transpose(1, 2) for u in embedded])
        if tokens.shape[1] > seq_len:
            raise ValueError(f"{tokens.shape[1]} tokens exceed seq_len={seq_len}")
        batch = tokens.shape[0]
        if kv_cache is None:  # no cache: attend within the call only
            size = tokens.shape[1]
            kv_cache = [self._empty_cache(batch, size, tokens) for _ in self.blocks]
            crossattn_cache = None
            current_start = 0
        if crossattn_cache is None:
            crossattn_cache = [None] * len(self.blocks)
        e = self.time_embedding(sinusoid(self.freq_dim, t.flatten()).type_as(tokens))
        e0 = self.time_projection(e).unflatten(1, (6, self.dim)).unflatten(0, t.shape)
        text = self.text_embedding(
            torch.stack([torch.cat([u, u.new_zeros(self.text_len - u.size(0), u.size(1))]) for u in context])
        )
        updates = []
        for index, block in enumerate(self.blocks):
            result = block(
                tokens, e0, grid, self.freqs, text, kv_cache[index], crossattn_cache[index], current_start
            )
            if isinstance(result, tuple):
                tokens, update = result
                updates.append((index, update))
            else:
                tokens = result
        for index, (keys, values, global_end, local_end) in updates:
            kv_cache[index]["k"].copy_(keys)
            kv_cache[index]["v"].copy_(values)
            kv_cache[index]["global_end_index"].fill_(global_end)
            kv_cache[index]["local_end_index"].fill_(local_end)
        out = self.head(tokens, e.unflatten(0, t.shape).unsqueeze(2))
        _, ph, pw = self.patch_size
        videos = []
        for u in out:
            u = u.view(frames, height, width, 1, ph, pw, self.out_dim)
            videos.append(
                torch.einsum("fhwpqrc->cfphqwr", u).reshape(self.out_dim, frames, height * ph, width * pw)
            )
        return torch.stack(videos)

    def _empty_cache(self, batch: int, size: int, like: torch.Tensor) -> dict[str, Any]:
        head_dim = self.dim // self.num_heads
        return {
            "k": like.new_zeros(batch, size, self.num_heads, head_dim),
            "v": like.new_zeros(batch, size, self.num_heads, head_dim),
            "global_end_index": torch.tensor([0]),
            "local_end_index": torch.tensor([0]),
        }


# ------------------------------------------------------------------------------------- PEFT
class LoraLinearStandin(nn.Module):
    """PEFT-like LoRA Linear: ``base_layer`` + ``lora_B[a](lora_A[a](x)) * scaling[a]`` unless merged."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, adapter: str = "default") -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict({adapter: nn.Linear(base_layer.in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({adapter: nn.Linear(rank, base_layer.out_features, bias=False)})
        self.scaling = {adapter: alpha / rank}
        self.active_adapters = [adapter]
        self.merged_adapters: list[str] = []
        self.disable_adapters = False

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            result = result + self.lora_B[name](self.lora_A[name](x)) * self.scaling[name]
        return result


class LoraModelStandin(nn.Module):
    """``LoraModel``-like: holds the tuned model at ``model`` and forwards unknown attributes to it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.forward(*args, **kwargs)


class PeftModelStandin(nn.Module):
    """``PeftModel``-like: the tuned model at ``base_model.model``; forward calls it, attributes forward to it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.base_model = LoraModelStandin(model)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def get_base_model(self) -> nn.Module:
        model: nn.Module = self.base_model.model
        return model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.get_base_model()(*args, **kwargs)


def inject_lora(
    model: CausalWanStandin, rank: int = 4, alpha: float = 8.0, seed: int = 0
) -> PeftModelStandin:
    """Wrap every Linear of the blocks (attention ``q, k, v, o`` and the FFN) with LoRA, B non-zero."""
    generator = torch.Generator().manual_seed(seed)
    block: Any
    for block in model.blocks:
        for attention in (block.self_attn, block.cross_attn):
            for name in ("q", "k", "v", "o"):
                setattr(attention, name, LoraLinearStandin(getattr(attention, name), rank, alpha))
        for index in (0, 2):
            block.ffn[index] = LoraLinearStandin(block.ffn[index], rank, alpha)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinearStandin):
                lora: Any
                for lora in (module.lora_A["default"], module.lora_B["default"]):
                    lora.weight.copy_(torch.randn(lora.weight.shape, generator=generator) * 0.1)
    return PeftModelStandin(model)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict under the official names with every LoRA delta folded into its base weight."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.clone()
    for name, module in model.named_modules():
        if isinstance(module, LoraLinearStandin):
            lora_a: Any = module.lora_A["default"]
            lora_b: Any = module.lora_B["default"]
            delta = lora_b.weight @ lora_a.weight * module.scaling["default"]
            state[f"{name}.weight"] = state[f"{name}.weight"] + delta
    return state


# ------------------------------------------------------------------------------- builder
def build_pipeline(
    variant: str,
    model_config: dict[str, Any],
    *,
    chunk_frames: int = 3,
    latent_hw: tuple[int, int] = (6, 8),
    local_attn_size: int = 12,
    sink_size: int = 3,
    denoising_step_list: tuple[int, ...] = (1000, 750, 500, 250),
    warp_denoising_step: bool = True,
    shift: float = 5.0,
    context_noise: float = 0,
    state_dict: dict[str, torch.Tensor] | None = None,
    lora_rank: int = 4,
    seed: int = 0,
    compression_method: str = "ema",
    ema_alpha_long: float = 0.01,
    ema_alpha_short: float = 0.1,
    ema_adaptive: bool = False,
    independent_first_frame: bool = False,
    pipeline_class: str = "CausalInferencePipeline",
) -> Any:
    """A stand-in pipeline of ``variant`` around a fresh (or ``state_dict``-loaded) stand-in model.

    ``compression_method``, ``ema_alpha_long``, ``ema_alpha_short`` and ``ema_adaptive`` are the
    official MemRoPE cache settings: the ``"official"`` variant's attention modules and
    ``args.model_kwargs`` hold them (with ``local_attn_size`` and ``sink_size``); the other variants
    have none. ``pipeline_class`` picks the upstream pipeline shape (one of :data:`PIPELINE_CLASSES`).
    """
    if pipeline_class not in PIPELINE_CLASSES:
        raise ValueError(f"pipeline_class must be one of {PIPELINE_CLASSES}, got {pipeline_class!r}")
    torch.manual_seed(seed)
    official: dict[str, Any] = {
        "compression_method": compression_method,
        "ema_alpha_long": ema_alpha_long,
        "ema_alpha_short": ema_alpha_short,
        "ema_adaptive": ema_adaptive,
    }
    model = CausalWanStandin(
        **model_config, local_attn_size=local_attn_size, sink_size=sink_size, variant=variant, **official
    )
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    model.num_frame_per_block = chunk_frames
    inner: nn.Module = inject_lora(model, rank=lora_rank, seed=seed) if variant == "longlive" else model
    wrapper = WanDiffusionWrapperStandin(inner, shift=shift, attribute_caches=variant == "official")
    patch = tuple(model_config.get("patch_size", (1, 2, 2)))
    frame_seq_length = (latent_hw[0] // patch[1]) * (latent_hw[1] // patch[2])
    model_kwargs: dict[str, Any] = {"local_attn_size": local_attn_size, "sink_size": sink_size}
    if variant == "official":
        model_kwargs.update(official)
    args = SimpleNamespace(
        model_kwargs=model_kwargs,
        num_frame_per_block=chunk_frames,
        denoising_step_list=list(denoising_step_list),
        warp_denoising_step=warp_denoising_step,
        context_noise=context_noise,
        independent_first_frame=independent_first_frame,
    )
    if pipeline_class == "CausalDiffusionInferencePipeline":
        return CausalDiffusionInferencePipelineStandin(
            wrapper,
            num_frame_per_block=chunk_frames,
            frame_seq_length=frame_seq_length,
            local_attn_size=local_attn_size,
            independent_first_frame=independent_first_frame,
            args=args,
        )
    cls = (
        InteractiveCausalInferencePipelineStandin
        if pipeline_class == "InteractiveCausalInferencePipeline"
        else CausalInferencePipelineStandin
    )
    return cls(
        wrapper,
        variant=variant,
        num_frame_per_block=chunk_frames,
        frame_seq_length=frame_seq_length,
        denoising_step_list=denoising_step_list,
        warp_denoising_step=warp_denoising_step,
        local_attn_size=local_attn_size,
        context_noise=context_noise,
        independent_first_frame=independent_first_frame,
        args=args,
    )
