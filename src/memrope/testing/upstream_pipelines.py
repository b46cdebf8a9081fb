"""Stand-ins for the upstream ``WanDiffusionWrapper`` and inference pipelines (split from :mod:`.upstream`).

``WanDiffusionWrapperStandin`` wraps a stand-in model (``generator.model``) with the flow-matching
schedule; the pipelines reproduce the chunk loops of Self-Forcing's ``CausalInferencePipeline``,
LongLive's ``InteractiveCausalInferencePipeline`` and Self-Forcing's classifier-free-guidance
``CausalDiffusionInferencePipeline`` with the upstream per-block cache-list allocation. Build them
with :func:`memrope.testing.upstream.build_pipeline`, which also re-exports every name here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NUM_TRAIN_TIMESTEPS = 1000


# ------------------------------------------------------------------------------- wrapper


def block_sizes(num_frames: int, chunk: int, independent_first_frame: bool) -> list[int]:
    """Frames of each upstream block: ``[1]`` first with ``independent_first_frame``, then whole chunks."""
    first = 1 if independent_first_frame else 0
    if num_frames < first or (num_frames - first) % chunk:
        raise ValueError(f"the noise has {num_frames} frames, not {first} + a multiple of {chunk} per block")
    return [1] * first + [chunk] * ((num_frames - first) // chunk)


class WanDiffusionWrapperStandin(nn.Module):
    """``WanDiffusionWrapper``-like: ``forward(noisy_image_or_video, conditional_dict, timestep, ...) -> (flow, x0)``."""

    def __init__(self, model: nn.Module, shift: float = 5.0, attribute_caches: bool = False) -> None:
        super().__init__()
        self.model = model
        self.seq_len = 1 << 20
        self.attribute_caches = attribute_caches
        sigmas = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1)[:-1]
        self.sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = self.sigmas * NUM_TRAIN_TIMESTEPS

    def sigma_of(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        table_t, table_s = self.timesteps.to(dtype), self.sigmas.to(dtype)
        index = torch.argmin((table_t.unsqueeze(0) - timestep.reshape(-1, 1).to(dtype)).abs(), dim=1)
        return table_s[index]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma_of(timestep, torch.float32).reshape(-1, 1, 1, 1)
        return ((1 - sigma) * x0 + sigma * noise).type_as(noise)

    def forward(
        self,
        noisy_image_or_video: torch.Tensor,
        conditional_dict: dict[str, torch.Tensor],
        timestep: torch.Tensor,
        kv_cache: list[dict[str, Any]] | bool | None = None,
        crossattn_cache: list[Any] | None = None,
        current_start: int | None = None,
        cache_start: int | None = None,
        block_mask: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.attribute_caches and kv_cache is not None:
            kv_cache, crossattn_cache = True, None
        extra = (
            {} if block_mask is None else {"block_mask": block_mask}
        )  # LongLive's re-cache call passes one
        flow = self.model(
            noisy_image_or_video.permute(0, 2, 1, 3, 4),
            t=timestep,
            context=conditional_dict["prompt_embeds"],
            seq_len=self.seq_len,
            kv_cache=kv_cache,
            crossattn_cache=crossattn_cache,
            current_start=current_start,
            cache_start=cache_start,
            **extra,
        ).permute(0, 2, 1, 3, 4)
        sigma = self.sigma_of(timestep.flatten(), torch.float64).reshape(-1, 1, 1, 1)
        x0 = (noisy_image_or_video.flatten(0, 1).double() - sigma * flow.flatten(0, 1).double()).to(
            flow.dtype
        )
        return flow, x0.unflatten(0, flow.shape[:2])


# ------------------------------------------------------------------------------- pipeline
def _kv_cache_list(
    wan: Any, batch_size: int, size: int, dtype: torch.dtype, device: Any, queries: bool
) -> list[dict[str, Any]]:
    """Per-block upstream self-attention cache dicts of ``size`` tokens (``q`` too for the official code)."""
    head_dim = wan.dim // wan.num_heads
    caches = []
    for _ in range(len(wan.blocks)):
        entry = {
            "k": torch.zeros([batch_size, size, wan.num_heads, head_dim], dtype=dtype, device=device),
            "v": torch.zeros([batch_size, size, wan.num_heads, head_dim], dtype=dtype, device=device),
            "global_end_index": torch.tensor([0], dtype=torch.long, device=device),
            "local_end_index": torch.tensor([0], dtype=torch.long, device=device),
        }
        if queries:
            entry["q"] = torch.zeros_like(entry["k"])
        caches.append(entry)
    return caches


def _text_cache_list(
    wan: Any, batch_size: int, dtype: torch.dtype, device: Any, tensor_flag: bool
) -> list[dict[str, Any]]:
    """Per-block upstream cross-attention cache dicts; ``is_init`` a bool tensor (Self-Forcing) or a bool."""
    head_dim = wan.dim // wan.num_heads
    return [
        {
            "k": torch.zeros([batch_size, wan.text_len, wan.num_heads, head_dim], dtype=dtype, device=device),
            "v": torch.zeros([batch_size, wan.text_len, wan.num_heads, head_dim], dtype=dtype, device=device),
            "is_init": torch.zeros([1], dtype=torch.bool, device=device) if tensor_flag else False,
        }
        for _ in range(len(wan.blocks))
    ]


def _reset_text_flags(crossattn_cache: list[dict[str, Any]] | None) -> None:
    for entry in crossattn_cache or []:
        if isinstance(entry["is_init"], torch.Tensor):
            entry["is_init"].fill_(False)
        else:
            entry["is_init"] = False


def _inner_wan(generator: WanDiffusionWrapperStandin) -> Any:
    wan: Any = generator.model
    return wan.base_model.model if hasattr(wan, "base_model") else wan


class CausalInferencePipelineStandin(nn.Module):
    """``CausalInferencePipeline``-like chunk loop (docs/design.md §10) with upstream cache allocation.

    ``independent_first_frame=True`` generates a 1-frame first block before the chunks, as
    Self-Forcing does (the noise then has ``1 + k * num_frame_per_block`` frames). ``args`` mimics the
    upstream config object (``args.model_kwargs`` holds what the model was built with).
    """

    def __init__(
        self,
        generator: WanDiffusionWrapperStandin,
        *,
        variant: str,
        num_frame_per_block: int,
        frame_seq_length: int,
        denoising_step_list: tuple[int, ...] = (1000, 750, 500, 250),
        warp_denoising_step: bool = True,
        local_attn_size: int = 12,
        context_noise: float = 0,
        max_frames: int = 64,
        independent_first_frame: bool = False,
        args: Any = None,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.variant = variant
        self.num_frame_per_block = num_frame_per_block
        self.frame_seq_length = frame_seq_length
        self.local_attn_size = local_attn_size
        self.context_noise = context_noise
        self.max_frames = max_frames
        self.independent_first_frame = independent_first_frame
        self.args = args
        steps = torch.tensor(denoising_step_list, dtype=torch.long)
        if warp_denoising_step:
            table = torch.cat([generator.timesteps, torch.zeros(1)])
            self.denoising_step_list = table[NUM_TRAIN_TIMESTEPS - steps]
        else:
            self.denoising_step_list = steps
        wan = _inner_wan(generator)
        self.wan: list[Any] = [wan]  # a list: not registered as a submodule twice
        self.num_transformer_blocks = len(wan.blocks)
        self.kv_cache1: list[dict[str, Any]] | None = None
        self.crossattn_cache: list[dict[str, Any]] | None = None
        self.allocations = 0

    def _initialize_kv_cache(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
        kv_cache_size_override: int | None = None,
    ) -> None:
        if kv_cache_size_override is not None:
            size = kv_cache_size_override
        elif self.local_attn_size != -1:
            size = self.local_attn_size * self.frame_seq_length
        else:
            size = self.max_frames * self.frame_seq_length
        self.allocations += 1
        self.kv_cache1 = _kv_cache_list(
            self.wan[0], batch_size, size, dtype, device, queries=self.variant == "official"
        )

    def _initialize_crossattn_cache(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.crossattn_cache = _text_cache_list(
            self.wan[0], batch_size, dtype, device, self.variant == "self_forcing"
        )

    def _block_sizes(self, num_frames: int) -> list[int]:
        return block_sizes(num_frames, self.num_frame_per_block, self.independent_first_frame)

    def _start_video(self, batch: int, num_frames: int, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate (or, for Self-Forcing, reset) the caches as the upstream pipeline does."""
        if self.variant == "self_forcing" and self.kv_cache1 is not None and self.crossattn_cache is not None:
            _reset_text_flags(self.crossattn_cache)
            for entry in self.kv_cache1:
                entry["global_end_index"] = torch.tensor([0], dtype=torch.long, device=device)
                entry["local_end_index"] = torch.tensor([0], dtype=torch.long, device=device)
        else:
            override = None
            if self.variant != "self_forcing":
                frames = self.local_attn_size if self.local_attn_size != -1 else num_frames
                override = frames * self.frame_seq_length
            if override is None:
                self._initialize_kv_cache(batch_size=batch, dtype=dtype, device=device)
            else:
                self._initialize_kv_cache(
                    batch_size=batch, dtype=dtype, device=device, kv_cache_size_override=override
                )
            self._initialize_crossattn_cache(batch_size=batch, dtype=dtype, device=device)
        if self.variant == "official":
            self.wan[0]._kv_cache_attr = self.kv_cache1
            self.wan[0]._crossattn_cache_attr = self.crossattn_cache

    def _denoise_block(
        self,
        noisy: torch.Tensor,
        start: int,
        conditional_dict: dict[str, torch.Tensor],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The denoising steps of one block at latent frame ``start``, then its clean cache call."""
        batch, frames, channels, height, width = noisy.shape
        device, dtype = noisy.device, noisy.dtype
        steps = self.denoising_step_list
        for index, current in enumerate(steps):
            timestep = torch.ones([batch, frames], device=device, dtype=torch.int64) * current
            _, denoised = self.generator(
                noisy_image_or_video=noisy,
                conditional_dict=conditional_dict,
                timestep=timestep,
                kv_cache=self.kv_cache1,
                crossattn_cache=self.crossattn_cache,
                current_start=start * self.frame_seq_length,
            )
            if index + 1 < len(steps):
                shape = (batch * frames, channels, height, width)
                if generator is None:
                    fresh = torch.randn(shape, dtype=dtype, device=device)
                else:
                    fresh = torch.randn(shape, generator=generator, dtype=dtype).to(device)
                following = steps[index + 1] * torch.ones([batch * frames], dtype=torch.long)
                noisy = self.generator.add_noise(denoised.flatten(0, 1), fresh, following).unflatten(
                    0, (batch, frames)
                )
        self.generator(
            noisy_image_or_video=denoised,
            conditional_dict=conditional_dict,
            timestep=torch.ones_like(timestep) * self.context_noise,
            kv_cache=self.kv_cache1,
            crossattn_cache=self.crossattn_cache,
            current_start=start * self.frame_seq_length,
        )
        return denoised

    def inference(
        self, noise: torch.Tensor, prompt_embeds: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latents ``[B, F, C, H, W]`` generated block by block from ``noise`` (same shape)."""
        batch, num_frames = noise.shape[:2]
        blocks = self._block_sizes(num_frames)
        self._start_video(batch, num_frames, noise.dtype, noise.device)
        output = torch.zeros_like(noise)
        start = 0
        for frames in blocks:
            chunk_noise = noise[:, start : start + frames]
            output[:, start : start + frames] = self._denoise_block(
                chunk_noise, start, {"prompt_embeds": prompt_embeds}, generator
            )
            start += frames
        return output


class InteractiveCausalInferencePipelineStandin(CausalInferencePipelineStandin):
    """LongLive's ``InteractiveCausalInferencePipeline``-like: prompt switches with a KV re-cache.

    At a switch, ``_recache_after_switch`` re-runs the last ``min(local_attn_size, frame)`` generated
    frames (all of them for -1) in *one* call at the context timestep under the new prompt, with a
    blockwise causal ``block_mask``, resetting the text cache (``k``/``v`` zeroed, ``is_init = False``)
    before and after it, as LongLive's ``pipeline/interactive_causal_inference.py`` does.
    """

    def _reset_text_cache(self) -> None:
        for entry in self.crossattn_cache or []:
            entry["k"].zero_()
            entry["v"].zero_()
            entry["is_init"] = False

    def _recache_after_switch(
        self, output: torch.Tensor, current_start_frame: int, new_conditional_dict: dict[str, torch.Tensor]
    ) -> None:
        self._reset_text_cache()
        if current_start_frame == 0:
            return
        frames = (
            current_start_frame
            if self.local_attn_size == -1
            else min(self.local_attn_size, current_start_frame)
        )
        recache_start = current_start_frame - frames
        batch = output.shape[0]
        self.generator(
            noisy_image_or_video=output[:, recache_start:current_start_frame],
            conditional_dict=new_conditional_dict,
            timestep=torch.ones([batch, frames], device=output.device, dtype=torch.int64)
            * self.context_noise,
            kv_cache=self.kv_cache1,
            crossattn_cache=self.crossattn_cache,
            current_start=recache_start * self.frame_seq_length,
            block_mask=("blockwise causal", frames, self.num_frame_per_block),
        )
        self._reset_text_cache()

    def inference(  # type: ignore[override]
        self,
        noise: torch.Tensor,
        prompt_embeds_list: list[torch.Tensor],
        switch_frame_indices: list[int],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latents for ``noise``; segment ``i + 1``'s prompt from latent frame ``switch_frame_indices[i]`` on."""
        if len(switch_frame_indices) != len(prompt_embeds_list) - 1:
            raise ValueError("switch_frame_indices needs one entry fewer than prompt_embeds_list")
        batch, num_frames = noise.shape[:2]
        blocks = self._block_sizes(num_frames)
        self._start_video(batch, num_frames, noise.dtype, noise.device)
        output = torch.zeros_like(noise)
        segment, start = 0, 0
        for frames in blocks:
            if segment < len(switch_frame_indices) and start >= switch_frame_indices[segment]:
                segment += 1
                self._recache_after_switch(output, start, {"prompt_embeds": prompt_embeds_list[segment]})
            conditional_dict = {"prompt_embeds": prompt_embeds_list[segment]}
            output[:, start : start + frames] = self._denoise_block(
                noise[:, start : start + frames], start, conditional_dict, generator
            )
            start += frames
        return output


class CausalDiffusionInferencePipelineStandin(nn.Module):
    """Self-Forcing's ``CausalDiffusionInferencePipeline``-like: classifier-free guidance with two caches.

    The call pattern of Self-Forcing's ``pipeline/causal_diffusion_inference.py`` (text to video, no
    ``initial_latent``): the caches are allocated on the first video and reset for later ones
    (``is_init.fill_(False)``, end indices re-assigned); blocks of ``num_frame_per_block`` frames,
    after a 1-frame block with ``independent_first_frame``; every sampling step calls the generator
    with ``kv_cache_pos`` / ``crossattn_cache_pos`` (the prompt), then ``kv_cache_neg`` /
    ``crossattn_cache_neg`` (the negative prompt), both with ``current_start = cache_start``, and mixes
    the flows ``uncond + guidance_scale * (cond - uncond)``; then both caches get the clean block at
    ``timestep * 0``. The sampler is an Euler step on ``sigma = t / 1000`` (upstream: UniPC over 50
    shifted steps), which does not change the cache calls.
    """

    def __init__(
        self,
        generator: WanDiffusionWrapperStandin,
        *,
        num_frame_per_block: int,
        frame_seq_length: int,
        sampling_timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0),
        guidance_scale: float = 3.0,
        local_attn_size: int = 12,
        independent_first_frame: bool = False,
        args: Any = None,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.num_frame_per_block = num_frame_per_block
        self.frame_seq_length = frame_seq_length
        self.sampling_timesteps = sampling_timesteps
        self.guidance_scale = guidance_scale
        self.local_attn_size = local_attn_size
        self.independent_first_frame = independent_first_frame
        self.args = args
        wan = _inner_wan(generator)
        self.wan: list[Any] = [wan]
        self.num_transformer_blocks = len(wan.blocks)
        self.kv_cache_pos: list[dict[str, Any]] | None = None
        self.kv_cache_neg: list[dict[str, Any]] | None = None
        self.crossattn_cache_pos: list[dict[str, Any]] | None = None
        self.crossattn_cache_neg: list[dict[str, Any]] | None = None

    def _initialize_kv_cache(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> None:
        size = (self.local_attn_size if self.local_attn_size != -1 else 64) * self.frame_seq_length
        self.kv_cache_pos = _kv_cache_list(self.wan[0], batch_size, size, dtype, device, queries=False)
        self.kv_cache_neg = _kv_cache_list(self.wan[0], batch_size, size, dtype, device, queries=False)

    def _initialize_crossattn_cache(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.crossattn_cache_pos = _text_cache_list(self.wan[0], batch_size, dtype, device, tensor_flag=True)
        self.crossattn_cache_neg = _text_cache_list(self.wan[0], batch_size, dtype, device, tensor_flag=True)

    def _block_sizes(self, num_frames: int) -> list[int]:
        return block_sizes(num_frames, self.num_frame_per_block, self.independent_first_frame)

    def _start_video(self, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        if self.kv_cache_pos is None:
            self._initialize_kv_cache(batch_size=batch, dtype=dtype, device=device)
            self._initialize_crossattn_cache(batch_size=batch, dtype=dtype, device=device)
            return
        for text in (self.crossattn_cache_pos, self.crossattn_cache_neg):
            for entry in text or []:
                entry["is_init"].fill_(False)
        for kv in (self.kv_cache_pos, self.kv_cache_neg):
            for entry in kv or []:
                entry["global_end_index"] = torch.tensor([0], dtype=torch.long, device=device)
                entry["local_end_index"] = torch.tensor([0], dtype=torch.long, device=device)

    def inference(
        self, noise: torch.Tensor, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Latents ``[B, F, C, H, W]`` from ``noise`` (same shape), guided by the two prompts."""
        batch, num_frames = noise.shape[:2]
        blocks = self._block_sizes(num_frames)
        self._start_video(batch, noise.dtype, noise.device)
        conditional = {"prompt_embeds": prompt_embeds}
        unconditional = {"prompt_embeds": negative_prompt_embeds}
        output = torch.zeros_like(noise)
        sigmas = [t / NUM_TRAIN_TIMESTEPS for t in self.sampling_timesteps] + [0.0]
        start = 0
        for frames in blocks:
            latents = noise[:, start : start + frames]
            call = {
                "current_start": start * self.frame_seq_length,
                "cache_start": start * self.frame_seq_length,
            }
            timestep = torch.ones([batch, frames], device=noise.device, dtype=torch.float32)
            for index, value in enumerate(self.sampling_timesteps):
                timestep = value * torch.ones([batch, frames], device=noise.device, dtype=torch.float32)
                flow_cond, _ = self.generator(
                    noisy_image_or_video=latents,
                    conditional_dict=conditional,
                    timestep=timestep,
                    kv_cache=self.kv_cache_pos,
                    crossattn_cache=self.crossattn_cache_pos,
                    **call,
                )
                flow_uncond, _ = self.generator(
                    noisy_image_or_video=latents,
                    conditional_dict=unconditional,
                    timestep=timestep,
                    kv_cache=self.kv_cache_neg,
                    crossattn_cache=self.crossattn_cache_neg,
                    **call,
                )
                flow = flow_uncond + self.guidance_scale * (flow_cond - flow_uncond)
                latents = latents + (sigmas[index + 1] - sigmas[index]) * flow
            output[:, start : start + frames] = latents
            for conditional_dict, kv, text in (
                (conditional, self.kv_cache_pos, self.crossattn_cache_pos),
                (unconditional, self.kv_cache_neg, self.crossattn_cache_neg),
            ):
                self.generator(
                    noisy_image_or_video=latents,
                    conditional_dict=conditional_dict,
                    timestep=timestep * 0,
                    kv_cache=kv,
                    crossattn_cache=text,
                    **call,
                )
            start += frames
        return output


PIPELINE_CLASSES = (
    "CausalInferencePipeline",
    "InteractiveCausalInferencePipeline",
    "CausalDiffusionInferencePipeline",
)
