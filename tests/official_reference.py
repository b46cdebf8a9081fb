"""A literal, slow model of the official MemRoPE cache and pipeline, for making test vectors.

Written from the design page (``docs/design.md`` §3-§8, §10) in the official code's own terms:
per-layer token buffers with ``global_end`` / ``local_end`` pointers, a full clone of the cache on
every call, float64 complex RoPE over the whole cache, and the official branch structure (rolling
on the first call of a chunk that overflows the window, direct insert otherwise, sink protection
on recompute calls). It shares no cache logic with :class:`memrope.MemRoPECache`; it subclasses it
only so :class:`memrope.models.wan.CausalWanModel` accepts it, and takes the queries' float32 RoPE
tables from it.

:func:`write_reference_set` runs the official call protocol with this cache on a bundled set's
tiny model and writes a new set in the parity format. The bundled official vectors check the
reference itself (``tests/test_official_reference.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from memrope.cache import CacheContext, CallKind, MemRoPECache
from memrope.flow_matching import FlowMatchScheduler
from memrope.rope import frame_grid_positions
from memrope.testing.parity import cache_config_from_official, load_parity_set

OFFICIAL_FRAME_TOKENS = 1560  # the official code sizes max_attention_size with this constant
OFFICIAL_GLOBAL_ATTENTION_TOKENS = 32760
ROPE_THETA = 10000.0
ROPE_POSITIONS = 1024


def _axis_table(positions: int, channels: int) -> torch.Tensor:
    """Complex ``[positions, channels // 2]`` rotations of one RoPE axis, in float64."""
    exponents = torch.arange(0, channels, 2, dtype=torch.float64) / channels
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), 1.0 / ROPE_THETA**exponents)
    return torch.polar(torch.ones_like(angles), angles)


def _rope_float64(x: torch.Tensor, frames: torch.Tensor, frame_shape: tuple[int, int]) -> torch.Tensor:
    """Wan 3-axis RoPE of ``x`` ``[B, F*P, H, D]`` whose frame ``i`` sits at temporal index ``frames[i]``."""
    head_dim = x.shape[-1]
    spatial = 2 * (head_dim // 6)
    tables = [_axis_table(ROPE_POSITIONS, c) for c in (head_dim - 2 * spatial, spatial, spatial)]
    height, width = frame_shape
    token = torch.arange(height * width)
    rows, cols = token // width, token % width
    per_frame = [
        torch.cat([tables[0][int(f)].expand(height * width, -1), tables[1][rows], tables[2][cols]], dim=-1)
        for f in frames.tolist()
    ]
    rotation = torch.cat(per_frame)[:, None, :]  # [L, 1, D/2]
    pairs = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


@dataclass
class _Layer:
    keys: torch.Tensor
    values: torch.Tensor
    global_end: int = 0
    local_end: int = 0
    memory_ready: bool = False
    memory: dict[str, torch.Tensor] = field(default_factory=dict)


class OfficialReferenceCache(MemRoPECache):
    """The official per-block cache dicts and attention-time cache logic, one layer per block.

    Args:
        official: an official ``cache_config`` (``mode``, ``local_attn_size``, ``sink_size``,
            ``ema_alpha_long``, ``ema_alpha_short``, ``per_position_pooling_and_adaptive_alpha``).
        chunk_frames: frames per block; num_frames: frames of the video (sizes the unbounded cache).
        num_layers, batch_size, num_heads, head_dim, frame_shape: the geometry.
    """

    def __init__(
        self,
        official: dict[str, Any],
        *,
        chunk_frames: int,
        num_frames: int,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        frame_shape: tuple[int, int],
    ) -> None:
        super().__init__(
            cache_config_from_official(official, chunk_frames),
            num_layers=num_layers,
            batch_size=batch_size,
            num_heads=num_heads,
            head_dim=head_dim,
            frame_shape=frame_shape,
        )
        self.mode = official["mode"]
        self.window_frames = int(official["local_attn_size"])
        self.sink_frame_count = int(official["sink_size"])
        self.alpha_long = float(official["ema_alpha_long"])
        self.alpha_short = float(official["ema_alpha_short"])
        self.adaptive = bool(official.get("per_position_pooling_and_adaptive_alpha", False))
        frames = num_frames if self.window_frames == -1 else self.window_frames
        shape = (batch_size, frames * self.frame_seqlen, num_heads, head_dim)
        self.official_layers = [_Layer(torch.zeros(shape), torch.zeros(shape)) for _ in range(num_layers)]
        if self.window_frames == -1:
            self.max_attention_tokens = OFFICIAL_GLOBAL_ATTENTION_TOKENS
        else:
            self.max_attention_tokens = self.window_frames * OFFICIAL_FRAME_TOKENS

    def layer_contents(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-roped keys and values of ``layer``'s filled tokens, ``[B, local_end, H, D]``."""
        state = self.official_layers[layer]
        return state.keys[:, : state.local_end].clone(), state.values[:, : state.local_end].clone()

    def update(self, key: torch.Tensor, value: torch.Tensor, *, layer: int, start_frame: int) -> CacheContext:
        state = self.official_layers[layer]
        tokens = self.frame_seqlen
        start, new = start_frame * tokens, key.shape[1]
        end = start + new
        size = state.keys.shape[1]
        recompute = end <= state.global_end and start > 0
        keys, values = state.keys.clone(), state.values.clone()
        rolling = self.window_frames != -1 and end > state.global_end and state.local_end + new > size
        if rolling:
            local_end = self._roll(state, keys, values, key, value, new)
            query_first = self.window_frames - new // tokens
        else:
            local_end = state.local_end + end - state.global_end
            local_start = local_end - new
            write_start = max(local_start, self.sink_frame_count * tokens) if recompute else local_start
            if local_end > write_start:
                keys[:, write_start:local_end] = key[:, write_start - local_start :]
                values[:, write_start:local_end] = value[:, write_start - local_start :]
            query_first = local_start // tokens
        filled_frames = torch.arange(local_end // tokens)
        roped = _rope_float64(keys[:, :local_end], filled_frames, self.frame_shape)
        window = self._attention_window(local_end)
        state.keys, state.values = keys, values
        if not recompute:
            state.global_end, state.local_end = end, local_end
        query_frames = range(query_first, query_first + new // tokens)
        cos, sin = self.rope.cos_sin(frame_grid_positions(query_frames, self.frame_shape))
        return CacheContext(
            keys=roped[:, window], values=values[:, :local_end][:, window], query_cos=cos, query_sin=sin
        )

    def _attention_window(self, local_end: int) -> torch.Tensor:
        """Token indices attended to: the sink plus the newest ``max_attention_tokens - sink`` tokens."""
        sink = self.sink_frame_count * self.frame_seqlen
        if sink > 0 and local_end > sink:
            budget = self.max_attention_tokens - sink
            first_local = max(sink, local_end - budget) if budget > 0 else local_end
            return torch.cat([torch.arange(sink), torch.arange(first_local, local_end)])
        return torch.arange(max(0, local_end - self.max_attention_tokens), local_end)

    def _roll(
        self,
        state: _Layer,
        keys: torch.Tensor,
        values: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        new: int,
    ) -> int:
        """First call of a chunk that overflows the window: evict, compress, insert. Returns local_end."""
        tokens = self.frame_seqlen
        sink = self.sink_frame_count * tokens
        evicted = new + state.local_end - keys.shape[1]
        if self.mode == "eviction":
            rolled = state.local_end - evicted - sink
            keys[:, sink : sink + rolled] = state.keys[:, sink + evicted : sink + evicted + rolled]
            values[:, sink : sink + rolled] = state.values[:, sink + evicted : sink + evicted + rolled]
            local_end = state.local_end - evicted
        else:
            recent_start = sink + 2 * tokens
            pooled = {
                "keys": self._pool(state.keys[:, recent_start : recent_start + evicted]),
                "values": self._pool(state.values[:, recent_start : recent_start + evicted]),
            }
            if not state.memory_ready:
                state.memory = {
                    f"{which}_{name}": pooled[name] for which in ("long", "short") for name in pooled
                }
                state.memory_ready = True
            else:
                short_rate = self._short_rate(pooled["keys"], state.memory["short_keys"])
                for name, block in pooled.items():
                    long_old, short_old = state.memory[f"long_{name}"], state.memory[f"short_{name}"]
                    state.memory[f"long_{name}"] = self.alpha_long * block + (1 - self.alpha_long) * long_old
                    state.memory[f"short_{name}"] = short_rate * block + (1 - short_rate) * short_old
            for slot, which in ((sink, "long"), (sink + tokens, "short")):
                keys[:, slot : slot + tokens] = state.memory[f"{which}_keys"]
                values[:, slot : slot + tokens] = state.memory[f"{which}_values"]
            kept = state.local_end - recent_start - evicted
            keys[:, recent_start : recent_start + kept] = state.keys[
                :, recent_start + evicted : state.local_end
            ]
            values[:, recent_start : recent_start + kept] = state.values[
                :, recent_start + evicted : state.local_end
            ]
            local_end = recent_start + kept
        keys[:, local_end : local_end + new] = key
        values[:, local_end : local_end + new] = value
        return local_end + new

    def _pool(self, evicted: torch.Tensor) -> torch.Tensor:
        """``[B, n*P, H, D]`` -> one frame ``[B, P, H, D]``: per-position mean (adaptive) or global mean."""
        tokens = self.frame_seqlen
        if self.adaptive:
            return evicted.unflatten(1, (evicted.shape[1] // tokens, tokens)).mean(dim=1)
        return evicted.mean(dim=1, keepdim=True).expand(-1, tokens, -1, -1)

    def _short_rate(self, pooled_keys: torch.Tensor, short_keys: torch.Tensor) -> torch.Tensor | float:
        if not self.adaptive:
            return self.alpha_short
        motion = (pooled_keys - short_keys).norm(dim=-1).mean(dim=-1)
        motion = motion / (motion.max(dim=-1, keepdim=True).values + 1e-8)
        low, high = self.alpha_short * 0.1, self.alpha_short * 5.0
        return (low + motion * (high - low))[..., None, None]

    def _check_call(self, key: torch.Tensor, value: torch.Tensor, layer: int, start_frame: int) -> CallKind:
        raise NotImplementedError("OfficialReferenceCache implements update() directly")


def _settings(pipeline: dict[str, Any], scheduler: FlowMatchScheduler) -> list[float]:
    steps = pipeline["denoising_step_list"]
    if pipeline["warp_denoising_step"]:
        return [float(t) for t in scheduler.warp(steps)]
    return [float(t) for t in steps]


def write_reference_set(
    base: Path, directory: Path, name: str, cache_config: dict[str, Any], pipeline: dict[str, Any]
) -> Path:
    """Write set ``name`` into ``directory``: ``base``'s tiny model under ``cache_config`` / ``pipeline``.

    ``pipeline`` overrides ``base``'s pipeline settings (``num_frames``, ``frames_per_block``,
    ``denoising_step_list``, ``seed``, ...); ``independent_first_frame: True`` makes the first block
    1 frame, then blocks of ``frames_per_block``, as Self-Forcing's ``pipeline/causal_inference.py``
    does (``all_num_frames = [1] + [num_frame_per_block] * num_blocks``; the official MemRoPE pipeline
    refuses it, its cache code takes any call size). Returns the ``NAME.json`` path.
    """
    parity = load_parity_set(base)
    settings = {**parity.raw["pipeline"], **pipeline}
    scheduler = FlowMatchScheduler(shift=float(settings["timestep_shift"]))
    timesteps = _settings(settings, scheduler)
    settings["warped_timesteps"] = timesteps
    model = parity.build_model()
    batch, num_frames, chunk = settings["batch"], settings["num_frames"], settings["frames_per_block"]
    generator = torch.Generator("cpu").manual_seed(settings["seed"])
    noise = torch.randn(
        [batch, num_frames, settings["channels"], *settings["latent_hw"]], generator=generator
    )
    context = torch.stack(
        [torch.randn(5, parity.model_config.text_dim, generator=generator) for _ in range(batch)]
    )
    grid = model.token_grid(tuple(settings["latent_hw"]))
    cache = OfficialReferenceCache(
        cache_config,
        chunk_frames=chunk,
        num_frames=num_frames,
        num_layers=parity.model_config.num_layers,
        batch_size=batch,
        num_heads=parity.model_config.num_heads,
        head_dim=parity.model_config.head_dim,
        frame_shape=grid,
    )
    tensors: dict[str, torch.Tensor] = {"context": context, "noise": noise}
    calls: list[dict[str, int]] = []
    output = torch.zeros_like(noise)
    encoded = model.encode_context(context)

    def call(latents: torch.Tensor, timestep: torch.Tensor, start_frame: int) -> torch.Tensor:
        index = len(calls)
        flow = model(latents, timestep, encoded, cache=cache, start_frame=start_frame)
        tensors.update(
            {f"call{index}.x": latents.clone(), f"call{index}.t": timestep.clone(), f"call{index}.flow": flow}
        )
        calls.append({"index": index, "start_frame": start_frame, "num_frames": latents.shape[1]})
        return flow

    first = 1 if settings.get("independent_first_frame", False) else 0
    if (num_frames - first) % chunk:
        raise ValueError(f"num_frames={num_frames} is not {first} + a multiple of frames_per_block={chunk}")
    block_frames = [1] * first + [chunk] * ((num_frames - first) // chunk)
    with torch.no_grad():
        start_frame = 0
        for block, frames in enumerate(block_frames):
            noisy = noise[:, start_frame : start_frame + frames]
            for step, value in enumerate(timesteps):
                timestep = torch.full((batch, frames), value, dtype=torch.float32)
                clean = scheduler.to_x0(call(noisy, timestep, start_frame), noisy, timestep)
                if step + 1 < len(timesteps):
                    fresh = torch.randn(clean.flatten(0, 1).shape, generator=generator)
                    next_t = torch.full((batch * frames,), timesteps[step + 1], dtype=torch.float32)
                    noisy = scheduler.add_noise(clean.flatten(0, 1), fresh, next_t).unflatten(
                        0, clean.shape[:2]
                    )
            output[:, start_frame : start_frame + frames] = clean
            call(
                clean, torch.full((batch, frames), settings["context_noise"], dtype=torch.int64), start_frame
            )
            tensors[f"cache{block}.k0"], tensors[f"cache{block}.v0"] = cache.layer_contents(0)
            start_frame += frames
    tensors["output"] = output
    document = {
        "model_config": parity.raw["model_config"],
        "cache_config": cache_config,
        "pipeline": settings,
        "frame_seqlen": cache.frame_seqlen,
        "calls": calls,
        "num_calls": len(calls),
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(document, indent=1))
    save_file(parity.weights, directory / f"{name}.weights.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / f"{name}.calls.safetensors")
    assert math.isfinite(float(output.abs().max()))
    return path
