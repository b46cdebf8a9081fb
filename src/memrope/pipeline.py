"""Causal (chunk-by-chunk) inference for autoregressive video DiTs with a bounded KV cache.

:class:`CausalInferencePipeline` reproduces the official Self-Forcing / LongLive / MemRoPE inference
loop (docs/design.md §10): chunks of ``cache_config.chunk_frames`` latent frames (the first one of
``cache_config.first_chunk_frames`` when set: Self-Forcing's ``independent_first_frame``) are denoised
with a few flow-matching steps each, then written back into the cache as clean context.

* :meth:`CausalInferencePipeline.stream` yields one :class:`ChunkResult` per chunk as soon as it is
  done and keeps nothing of earlier chunks: use it for long videos.
* :meth:`CausalInferencePipeline.generate` concatenates the whole latent video (convenient for
  short clips; its memory grows with the length).
* A run can checkpoint itself (``save_every`` / ``checkpoint_path``) and be resumed bit-identically
  (``resume_from``): the checkpoint holds the cache, the CPU generator state, the prompt
  embeddings and the position in the initial noise (see below).
* ``initial_latents`` start the video from given clean latents (image-to-video or video continuation,
  Self-Forcing's ``initial_latent``): they are its first chunks, written into the cache chunk by chunk
  by a clean call at timestep 0 and yielded unchanged; generation continues after them, and the noise
  covers only the generated frames.
* ``prompt_switches`` change the prompt at given latent frames, as LongLive's interactive mode does:
  at a switch the cross-attention context is recomputed for the new prompt and the frames of the
  cache window after the sink (recent frames and the last chunk) are re-encoded under it (KV
  re-cache, :meth:`~memrope.cache.MemRoPECache.recaching`), while the sink and the memory tokens keep
  the past. The clean latents of that window (at most ``cache_frames - sink_frames`` frames) are kept
  for it while a switch lies ahead, and are part of checkpoints.

Random numbers follow the official order: one CPU ``torch.Generator`` first draws the initial noise
``[B, F, C, H, W]`` (unless ``noise`` is given), then every intermediate noise
``[B * chunk, C, H, W]``, all in the pipeline dtype, then moved to the device. The initial noise is
not held: :class:`~memrope.noise.InitialNoise` keeps one generator per batch item positioned at its
next unused frame and draws each chunk's frames when the chunk starts, bit-identical to the full draw,
and the main generator is advanced past the whole initial noise when the run starts (drawing and
discarding ``B*F*C*H*W`` values in bounded pieces: a one-off cost of a few seconds per batch item for a
1-hour video). Memory and checkpoints are then constant in the video length. Two cases still hold the
initial noise on the CPU for the whole run and keep its unused frames in checkpoints (``B*F*C*H*W``
elements): a user-supplied ``noise`` tensor, and latents whose ``C*H*W`` is not a multiple of 16,
where the frame-by-frame draw would not be bit-identical (see :mod:`memrope.noise`; a warning is
issued when that tensor is large). The default 16x60x104 latents are drawn lazily.

Non-finite values never reach a chunk's consumer: text embeddings and a given ``noise`` are checked
when a run starts (and the restored tensors and cache when it resumes); once per chunk, after its
clean context call and before it is checkpointed or yielded, so are its clean latents, the output of
that context call (NaN once any key or value in the cache is) and the cache's EMA memory, then the
decoded frames (three host syncs per chunk, four with a decoder; none per model call). A NaN or
infinity raises :class:`~memrope.errors.NonFiniteError` naming the tensor and the chunk; the
checkpoint on disk is then the last good one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from memrope._dtypes import dtype_name
from memrope._validation import as_int
from memrope.cache import KEY_WORKSPACES, MemRoPECache
from memrope.config import MemRoPEConfig
from memrope.errors import NonFiniteError
from memrope.flow_matching import FlowMatchScheduler
from memrope.kv_storage import kv_format
from memrope.loading import nonfinite_summary
from memrope.noise import InitialNoise, check_seed
from memrope.pipeline_state import (
    STATE_FORMAT,
    STATE_VERSION,
    PathLike,
    check_state,
    read_state_file,
    save_state_file,
    upgrade_state,
)
from memrope.pipeline_state import atomic_save as _atomic_save  # noqa: F401 (re-exported: tests import it)
from memrope.vae import VideoDecoder

__all__ = [
    "DEFAULT_LATENT_HW",
    "STATE_FORMAT",
    "STATE_VERSION",
    "CausalInferencePipeline",
    "CausalVideoModel",
    "ChunkResult",
    "PathLike",
    "PromptSwitch",
]

DEFAULT_LATENT_HW = (60, 104)
_NONFINITE_CHUNK_CAUSES = (
    "non-finite model weights or LoRA, activations that overflow the dtype (float16: use bfloat16 or "
    "float32), or a non-finite key or value written into the cache by an earlier call"
)


class CausalVideoModel(Protocol):
    """What the pipeline needs from a causal video DiT (``memrope.models.wan.CausalWanModel``)."""

    config: Any  # has in_dim, text_dim, text_len

    def new_cache(
        self,
        cache_config: MemRoPEConfig,
        batch_size: int,
        latent_hw: tuple[int, int],
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        kv_dtype: torch.dtype | str | None = None,
        key_workspace: Literal["per_layer", "shared"] | None = None,
    ) -> MemRoPECache: ...

    def encode_context(self, text_embeds: torch.Tensor) -> Any: ...

    def __call__(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: Any,
        *,
        cache: MemRoPECache,
        start_frame: int,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class ChunkResult:
    """One generated chunk.

    Attributes:
        index: chunk number, from 0.
        start_frame: first latent frame of the chunk in the video.
        latents: clean latents ``[B, f, C, H, W]`` in the pipeline dtype, on its device (``f``:
            ``chunk_frames``, or ``first_chunk_frames`` for chunk 0 when set); for a chunk of the
            run's ``initial_latents``, those latents.
        frames: the decoder's output for ``latents``, or ``None`` without a decoder.
    """

    index: int
    start_frame: int
    latents: torch.Tensor
    frames: torch.Tensor | None = None


@dataclass(frozen=True)
class PromptSwitch:
    """A prompt change: from latent frame ``frame`` on, generate under ``text_embeds`` ``[B, L, text_dim]``."""

    frame: int
    text_embeds: torch.Tensor


@dataclass
class _Run:
    """Everything one video needs between chunks (what a checkpoint holds, plus derived objects)."""

    text_embeds: torch.Tensor  # [B, L, text_dim], pipeline dtype, device: the prompt from frame 0
    context: Any  # model.encode_context() of the prompt in force
    noise: InitialNoise  # positioned at frame next_chunk * chunk_frames
    generator: torch.Generator
    cache: MemRoPECache
    num_frames: int
    next_chunk: int
    switches: tuple[PromptSwitch, ...] = ()  # increasing frames, embeds in pipeline dtype on device
    history: torch.Tensor | None = None  # clean latents [B, n, C, H, W] of the frames before next_chunk
    initial_frames: int = 0  # frames of the video given as initial_latents
    initial: torch.Tensor | None = None  # the given latents from next_chunk on, not yet in the cache


class CausalInferencePipeline:
    """Chunk-by-chunk flow-matching generation with a :class:`~memrope.cache.MemRoPECache`.

    Args:
        model: a causal video DiT following :class:`CausalVideoModel` (``CausalWanModel``).
        cache_config: the cache policy; ``cache_config.chunk_frames`` is the chunk size.
        denoising_steps: nominal steps per chunk (official ``denoising_step_list``).
        first_chunk_denoising_steps: the steps of the video's first chunk when it differs (Causal
            Forcing++'s ``denoising_step_list_first_chunk``: 4 steps, then 1 or 2); ``None``: the same.
        warp_denoising_step: map the steps onto the shifted schedule (official default ``True``).
        shift: timestep shift of the schedule.
        context_noise: timestep of the extra call that writes the clean chunk into the cache.
        noised_context: noise the clean chunk to ``context_noise`` (fresh noise from the run's
            generator, drawn after the chunk's denoising noise) before that call writes it into the
            cache, as Self-Forcing's training rollouts do, for models trained on noised context (the
            toy model); ``False`` (default, the official inference): the clean chunk at that timestep.
            The yielded latents are clean either way.
        dtype: dtype of latents and noise (the model's weights should match it).
        device: where latents live (default: the model's parameters' device).
        decoder: optional streaming :class:`~memrope.vae.VideoDecoder` applied to every chunk; it is
            reset when a run starts. Its temporal context is not part of checkpoints: after
            ``resume_from`` it starts fresh (``memrope generate`` re-decodes the logged latents first).
        kv_dtype: 8-bit storage of the cached keys and values (``torch.float8_e4m3fn``,
            ``torch.float8_e5m2``, ``torch.int8`` or a name such as ``"fp8"``), passed to
            ``model.new_cache``; ``None`` (default) keeps them in ``dtype`` and calls ``new_cache``
            without it.
        key_workspace: ``"per_layer"`` or ``"shared"`` RoPE'd-key workspace of the cache (see
            :class:`~memrope.cache.MemRoPECache`; ``"shared"``: least memory), passed to ``model.new_cache``;
            ``None`` (default): the model's default.
    """

    def __init__(
        self,
        model: CausalVideoModel,
        cache_config: MemRoPEConfig,
        *,
        denoising_steps: Sequence[int] = (1000, 750, 500, 250),
        first_chunk_denoising_steps: Sequence[int] | None = None,
        warp_denoising_step: bool = True,
        shift: float = 5.0,
        context_noise: float = 0,
        noised_context: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        decoder: VideoDecoder | None = None,
        kv_dtype: torch.dtype | str | None = None,
        key_workspace: Literal["per_layer", "shared"] | None = None,
    ) -> None:
        if not isinstance(cache_config, MemRoPEConfig):
            raise TypeError(f"cache_config must be a MemRoPEConfig, got {type(cache_config).__name__}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(
                f"dtype must be a floating torch.dtype (torch.float32, torch.bfloat16, ...), got {dtype!r}"
            )
        if (
            isinstance(context_noise, bool)
            or not isinstance(context_noise, (int, float))
            or context_noise < 0
        ):
            raise ValueError(f"context_noise must be a number >= 0, got {context_noise!r}")
        if not isinstance(noised_context, bool):
            raise TypeError(f"noised_context must be True or False, got {noised_context!r}")
        kv_format(kv_dtype, dtype)  # refuse an unsupported kv_dtype now, not at the first chunk
        if key_workspace not in (None, *KEY_WORKSPACES):
            raise ValueError(f"key_workspace must be one of {KEY_WORKSPACES} or None, got {key_workspace!r}")
        self.kv_dtype = kv_dtype
        self.key_workspace = key_workspace
        self.model = model
        self.cache_config = cache_config
        self.scheduler = FlowMatchScheduler(shift=shift, sigma_min=0.0)
        self.denoising_steps = tuple(denoising_steps)
        self.warp_denoising_step = bool(warp_denoising_step)
        self.context_noise = context_noise
        self.noised_context = noised_context
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.decoder = decoder
        timesteps = self._step_timesteps(self.denoising_steps, "denoising_steps")
        self.timesteps = timesteps.to(self.device)
        self._timestep_values = timesteps.tolist()
        self.first_chunk_denoising_steps = (
            None if first_chunk_denoising_steps is None else tuple(first_chunk_denoising_steps)
        )
        first_timesteps = (
            timesteps
            if self.first_chunk_denoising_steps is None
            else self._step_timesteps(self.first_chunk_denoising_steps, "first_chunk_denoising_steps")
        )
        self.first_chunk_timesteps = first_timesteps.to(self.device)
        self._first_timestep_values = first_timesteps.tolist()
        self._run: _Run | None = None

    @property
    def chunk_frames(self) -> int:
        """Latent frames generated per chunk."""
        return self.cache_config.chunk_frames

    @property
    def cache(self) -> MemRoPECache | None:
        """The KV cache of the current run (``None`` before :meth:`stream` or :meth:`generate`)."""
        return None if self._run is None else self._run.cache

    def _step_timesteps(self, denoising_steps: tuple[int, ...], argument: str) -> torch.Tensor:
        """float32 ``[S]`` timesteps of ``denoising_steps`` (warped or not); ``argument`` names it in errors."""
        if self.warp_denoising_step:
            return self.scheduler.warp(denoising_steps)
        steps = torch.as_tensor(denoising_steps)
        if steps.ndim != 1 or steps.numel() == 0 or steps.is_floating_point() or steps.dtype == torch.bool:
            raise ValueError(f"{argument} must be a non-empty sequence of ints, got {denoising_steps!r}")
        return steps.to(torch.float32)

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        text_embeds: torch.Tensor,
        *,
        num_frames: int,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        latent_hw: tuple[int, int] | None = None,
        prompt_switches: Sequence[tuple[int, torch.Tensor]] | None = None,
        initial_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate a whole latent video ``[B, num_frames, C, H, W]`` (see :meth:`stream`).

        The result is held in memory at once; prefer :meth:`stream` for long videos.
        """
        chunks = self.stream(
            text_embeds,
            num_frames=num_frames,
            noise=noise,
            generator=generator,
            seed=seed,
            latent_hw=latent_hw,
            prompt_switches=prompt_switches,
            initial_latents=initial_latents,
        )
        return torch.cat([chunk.latents for chunk in chunks], dim=1)

    def stream(
        self,
        text_embeds: torch.Tensor | None = None,
        *,
        num_frames: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        latent_hw: tuple[int, int] | None = None,
        prompt_switches: Sequence[tuple[int, torch.Tensor]] | None = None,
        initial_latents: torch.Tensor | None = None,
        resume_from: PathLike | dict[str, Any] | None = None,
        save_every: int | None = None,
        checkpoint_path: PathLike | None = None,
    ) -> Iterator[ChunkResult]:
        """Generate chunk by chunk, yielding each :class:`ChunkResult` as soon as it is done.

        Inputs are validated (and the generator advanced past the initial noise, see the module
        docstring) when this is called, before iterating.

        Args:
            text_embeds: prompt embeddings ``[B, L, text_dim]``, ``1 <= L <= text_len``.
            num_frames: latent frames of the video, a positive multiple of ``chunk_frames`` (with
                ``first_chunk_frames``: that plus a multiple of ``chunk_frames``); ``initial_latents``
                included.
            noise: initial noise ``[B, num_frames - n, C, H, W]`` of the generated frames (``n``: the
                frames of ``initial_latents``, else 0); drawn from the generator when ``None``.
            generator: CPU generator for all random draws (it is advanced); exclusive with ``seed``.
            seed: seeds a fresh CPU generator; with neither, a random seed is used.
            latent_hw: latent ``(H, W)`` when neither ``noise`` nor ``initial_latents`` gives it
                (default ``(60, 104)``: 480x832).
            prompt_switches: ``(frame, text_embeds)`` pairs, frames increasing, each a chunk boundary
                (a multiple of ``chunk_frames`` unless ``first_chunk_frames`` is set) in
                ``(0, num_frames)``, embeddings ``[B, L, text_dim]`` with the batch of ``text_embeds``: from ``frame`` on the video follows that prompt (see the module
                docstring); the frames before ``frame`` are exactly those of a run without the switch.
            initial_latents: clean latents ``[B, n, C, H, W]`` of the video's first ``n`` frames (the
                batch of ``text_embeds``), ``n`` a chunk boundary below ``num_frames``: they are
                written into the cache and yielded as the first chunks, and the rest of the video
                continues them (see the module docstring).
            resume_from: a checkpoint path or :meth:`state_dict` to continue from; excludes
                ``text_embeds``, ``num_frames``, ``noise``, ``generator``, ``seed``, ``latent_hw``,
                ``prompt_switches`` and ``initial_latents``.
            save_every: write a checkpoint to ``checkpoint_path`` after every ``save_every`` chunks.
            checkpoint_path: where periodic checkpoints go (replaced atomically).
        """
        _check_checkpointing(save_every, checkpoint_path)
        if resume_from is None:
            run = self._start_run(
                text_embeds, num_frames, noise, generator, seed, latent_hw, prompt_switches, initial_latents
            )
        else:
            given = {
                "text_embeds": text_embeds,
                "num_frames": num_frames,
                "noise": noise,
                "generator": generator,
                "seed": seed,
                "latent_hw": latent_hw,
                "prompt_switches": prompt_switches,
                "initial_latents": initial_latents,
            }
            conflicting = [name for name, value in given.items() if value is not None]
            if conflicting:
                raise ValueError(
                    f"resume_from restores the run; do not pass {', '.join(conflicting)} with it"
                )
            state = resume_from if isinstance(resume_from, dict) else self.load_state(resume_from)
            run = self._restore_run(state)
        self._run = run
        return self._chunks(run, save_every, checkpoint_path)

    def state_dict(self) -> dict[str, Any]:
        """State of the current run, at the last chunk boundary.

        Returns:
            ``{"cache": cache.state_dict(), "generator_state": uint8 tensor, "text_embeds":
            [B, L, text_dim], "noise": InitialNoise.state_dict(), "switches": [(frame, [B, L, text_dim])],
            "history": [B, n, C, H, W] or None, "initial_latents": [B, m, C, H, W] or None, "meta":
            JSON-able dict}`` with ``meta`` holding ``next_chunk``, ``start_frame``, ``num_frames``,
            ``initial_frames`` and the settings a resume must share.
            ``noise`` holds per-item generator states (a few KB), or the unused initial noise
            ``[B, F_left, C, H, W]`` when it is held (see the module docstring); ``history`` the
            clean latents a later prompt switch re-encodes; ``initial_latents`` the given latents not
            yet written into the cache.
        """
        if self._run is None:
            raise RuntimeError("state_dict() needs a run: call stream() or generate() first")
        return self._state_of(self._run)

    def save_state(self, path: PathLike) -> None:
        """Write :meth:`state_dict` to ``path`` as safetensors (metadata as JSON), atomically."""
        save_state_file(self.state_dict(), Path(path))

    def _state_of(self, run: _Run) -> dict[str, Any]:
        return {
            "cache": run.cache.state_dict(),
            "generator_state": run.generator.get_state(),
            "text_embeds": run.text_embeds.detach().clone(),
            "noise": run.noise.state_dict(),
            "switches": [(switch.frame, switch.text_embeds.detach().clone()) for switch in run.switches],
            "history": None if run.history is None else run.history.detach().clone(),
            "initial_latents": None if run.initial is None else run.initial.detach().clone(),
            "meta": {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "next_chunk": run.next_chunk,
                "start_frame": self.cache_config.chunk_start(run.next_chunk),
                "num_frames": run.num_frames,
                "initial_frames": run.initial_frames,
                **self._settings(),
            },
        }

    def load_state(self, path: PathLike) -> dict[str, Any]:
        """Read a checkpoint written by :meth:`save_state`, in :meth:`state_dict` form (CPU tensors).

        Raises:
            ValueError: when the file is empty, truncated or not a pipeline checkpoint
                (:class:`~memrope.loading.CheckpointFormatError` for the first two), or was written by
                a pipeline with other settings (cache policy, steps, dtype, ...), which would not
                resume exactly.
            NonFiniteError: a tensor of the checkpoint holds NaN or infinity.
        """
        state = read_state_file(path)
        self._check_state(state)
        return upgrade_state(state)

    # ------------------------------------------------------------------ run set-up
    def _settings(self) -> dict[str, Any]:
        """Settings a checkpoint must share with the pipeline that resumes it."""
        return {
            "chunk_frames": self.chunk_frames,
            "cache_config": self.cache_config.to_dict(),
            "timesteps": self._timestep_values,
            # None when the first chunk has the same steps: states written before this setting existed match
            "first_timesteps": None
            if self.first_chunk_denoising_steps is None
            else self._first_timestep_values,
            "shift": self.scheduler.shift,
            "context_noise": self.context_noise,
            "noised_context": self.noised_context,
            "dtype": dtype_name(self.dtype),
        }

    def _check_state(self, state: dict[str, Any]) -> None:
        check_state(state, self._settings())

    def _start_run(
        self,
        text_embeds: torch.Tensor | None,
        num_frames: int | None,
        noise: torch.Tensor | None,
        generator: torch.Generator | None,
        seed: int | None,
        latent_hw: tuple[int, int] | None,
        prompt_switches: Sequence[tuple[int, torch.Tensor]] | None,
        initial_latents: torch.Tensor | None,
    ) -> _Run:
        text_embeds = self._check_text_embeds(text_embeds)
        batch = text_embeds.shape[0]
        num_frames = self._check_num_frames(num_frames)
        switches = self._check_switches(prompt_switches, batch, num_frames)
        given = None
        if initial_latents is not None:
            given = self._check_initial_latents(initial_latents, batch, num_frames, latent_hw)
            latent_hw = (given.shape[3], given.shape[4])
        initial_frames = 0 if given is None else given.shape[1]
        generator = _make_generator(generator, seed)
        if noise is None:
            height, width = _check_latent_hw(latent_hw if latent_hw is not None else DEFAULT_LATENT_HW)
            frame_shape = (self.model.config.in_dim, height, width)
            initial = InitialNoise(generator, batch, num_frames - initial_frames, frame_shape, self.dtype)
        else:
            initial = InitialNoise.from_tensor(
                self._check_noise(noise, batch, num_frames, latent_hw, initial_frames).to(self.dtype)
            )
        run = self._new_run(
            text_embeds, initial, generator, num_frames, 0, switches, None, initial_frames, given
        )
        if self.decoder is not None:
            self.decoder.reset()
        return run

    def _restore_run(self, state: dict[str, Any]) -> _Run:
        self._check_state(state)
        state = upgrade_state(state)
        meta = state["meta"]
        generator = torch.Generator("cpu")
        generator.set_state(state["generator_state"].clone())  # clone: no storage offset
        text_embeds = self._check_text_embeds(state["text_embeds"], "resume_from text_embeds")
        noise = InitialNoise.from_state_dict(state["noise"])
        initial_frames = meta.get("initial_frames", 0)
        got = (noise.batch, noise.num_frames, noise.frames_used, noise.frame_shape[0])
        expected = (
            text_embeds.shape[0],
            meta["num_frames"] - initial_frames,
            max(meta["start_frame"] - initial_frames, 0),
            self.model.config.in_dim,
        )
        if got != expected:
            raise ValueError(
                "resume_from initial noise is for (batch, num_frames, frames used, channels) = "
                f"{got}, but the run needs {expected}"
            )
        if noise.lazy and noise.dtype != self.dtype:
            raise ValueError(f"resume_from initial noise is drawn in {noise.dtype}, not {self.dtype}")
        switches = self._check_switches(state.get("switches"), text_embeds.shape[0], meta["num_frames"])
        history = state.get("history")
        if history is not None:
            _check_finite(history, "resume_from history (the clean latents kept for prompt switches)")
        given = state.get("initial_latents")
        left = max(initial_frames - meta["start_frame"], 0)
        if (0 if given is None else given.shape[1]) != left:
            raise ValueError(
                f"resume_from holds {0 if given is None else given.shape[1]} initial latent frames not yet "
                f"in the cache, but the run needs {left}"
            )
        if given is not None:
            _check_finite(given, "resume_from initial_latents (the given frames not yet in the cache)")
        for name, value in state["noise"].items():
            if isinstance(value, torch.Tensor):
                _check_finite(value, f"resume_from initial noise {name!r}")
        run = self._new_run(
            text_embeds,
            noise,
            generator,
            meta["num_frames"],
            meta["next_chunk"],
            switches,
            history,
            initial_frames,
            given,
        )
        run.cache.load_state_dict(state["cache"])
        run.cache.check_finite()
        return run

    @torch.no_grad()
    def _new_run(
        self,
        text_embeds: torch.Tensor,
        noise: InitialNoise,
        generator: torch.Generator,
        num_frames: int,
        next_chunk: int,
        switches: tuple[PromptSwitch, ...],
        history: torch.Tensor | None,
        initial_frames: int = 0,
        initial: torch.Tensor | None = None,
    ) -> _Run:
        text_embeds = text_embeds.to(device=self.device, dtype=self.dtype)
        switches = tuple(
            PromptSwitch(s.frame, s.text_embeds.to(device=self.device, dtype=self.dtype)) for s in switches
        )
        latent_hw = noise.frame_shape[1:]
        # each layer's cache beside its block: a model split over devices keeps its cache split too
        storage: dict[str, Any] = {} if self.kv_dtype is None else {"kv_dtype": self.kv_dtype}
        if self.key_workspace is not None:
            storage["key_workspace"] = self.key_workspace
        cache = self.model.new_cache(
            self.cache_config, text_embeds.shape[0], latent_hw, dtype=self.dtype, **storage
        )
        start_frame = self.cache_config.chunk_start(next_chunk)
        in_force = [s.text_embeds for s in switches if s.frame < start_frame]
        context = self.model.encode_context(in_force[-1] if in_force else text_embeds)
        if history is not None:
            history = history.to(device=self.device, dtype=self.dtype)
        if initial is not None:
            initial = initial.to(device=self.device, dtype=self.dtype)
        return _Run(
            text_embeds,
            context,
            noise,
            generator,
            cache,
            num_frames,
            next_chunk,
            switches,
            history,
            initial_frames,
            initial,
        )

    # ------------------------------------------------------------------ validation
    def _check_text_embeds(self, text_embeds: torch.Tensor | None, name: str = "text_embeds") -> torch.Tensor:
        config = self.model.config
        if not isinstance(text_embeds, torch.Tensor):
            raise TypeError(
                f"{name} must be a tensor [B, L, {config.text_dim}], got {type(text_embeds).__name__}"
            )
        shape = tuple(text_embeds.shape)
        if (
            text_embeds.ndim != 3
            or shape[0] < 1
            or not 1 <= shape[1] <= config.text_len
            or shape[2] != config.text_dim
        ):
            raise ValueError(
                f"{name} must have shape [B >= 1, 1 <= L <= {config.text_len}, {config.text_dim}], "
                f"got {list(shape)}"
            )
        _check_finite(
            text_embeds,
            name,
            "check the text encoder (its weights, and its dtype: umT5 overflows in float16, use bfloat16 or "
            "float32)",
        )
        return text_embeds

    def _check_num_frames(self, num_frames: int | None) -> int:
        config = self.cache_config
        if (
            isinstance(num_frames, bool)
            or not isinstance(num_frames, int)
            or config.chunk_index(num_frames) in (None, 0)
        ):
            valid = _first_boundaries(config)
            if config.first_chunk_frames is None:
                what = f"a positive multiple of chunk_frames={config.chunk_frames}"
            else:
                what = (
                    f"first_chunk_frames={config.first_chunk_frames} + a multiple of "
                    f"chunk_frames={config.chunk_frames}"
                )
            raise ValueError(f"num_frames must be {what} ({valid}, ...), got {num_frames!r}")
        return num_frames

    def _check_switches(
        self, prompt_switches: Sequence[tuple[int, torch.Tensor]] | None, batch: int, num_frames: int
    ) -> tuple[PromptSwitch, ...]:
        if prompt_switches is None:
            return ()
        if isinstance(prompt_switches, (str, bytes, torch.Tensor)) or not isinstance(
            prompt_switches, Sequence
        ):
            raise TypeError(
                "prompt_switches must be a sequence of (frame, text_embeds) pairs, "
                f"got {type(prompt_switches).__name__}"
            )
        config = self.cache_config
        switches: list[PromptSwitch] = []
        for position, pair in enumerate(prompt_switches):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(
                    f"prompt_switches[{position}] must be a (frame, text_embeds) pair, got {pair!r:.80}"
                )
            frame, embeds = pair
            previous = switches[-1].frame if switches else 0
            if (
                isinstance(frame, bool)
                or not isinstance(frame, int)
                or config.chunk_index(frame) is None
                or not previous < frame < num_frames
            ):
                boundaries = (
                    f"a multiple of chunk_frames={config.chunk_frames}"
                    if config.first_chunk_frames is None
                    else f"a chunk boundary ({_first_boundaries(config)}, ...)"
                )
                raise ValueError(
                    f"prompt_switches[{position}] frame must be {boundaries} in "
                    f"({previous}, {num_frames}) (after the previous switch, before num_frames), got {frame!r}"
                )
            embeds = self._check_text_embeds(embeds, f"prompt_switches[{position}] text_embeds")
            if embeds.shape[0] != batch:
                raise ValueError(
                    f"prompt_switches[{position}] text_embeds must have the batch size of text_embeds "
                    f"({batch}), got {embeds.shape[0]}"
                )
            switches.append(PromptSwitch(frame, embeds))
        return tuple(switches)

    def _check_initial_latents(
        self, initial_latents: torch.Tensor, batch: int, num_frames: int, latent_hw: tuple[int, int] | None
    ) -> torch.Tensor:
        config = self.cache_config
        channels = self.model.config.in_dim
        expected = (
            f"[{batch}, n, {channels}, {_hw_text(latent_hw)}] with n a chunk boundary "
            f"({_first_boundaries(config)}, ...) below num_frames={num_frames}"
        )
        if not isinstance(initial_latents, torch.Tensor) or not initial_latents.is_floating_point():
            raise TypeError(
                f"initial_latents must be a floating tensor {expected}, got {initial_latents!r:.80}"
            )
        shape = tuple(initial_latents.shape)
        if (
            initial_latents.ndim != 5
            or shape[0] != batch
            or shape[2] != channels
            or (latent_hw is not None and shape[3:] != tuple(latent_hw))
            or config.chunk_index(shape[1]) in (None, 0)
            or shape[1] >= num_frames
        ):
            raise ValueError(
                f"initial_latents must have shape {expected} (batch from text_embeds), got {list(shape)}"
            )
        _check_finite(
            initial_latents, "initial_latents", "pass finite clean latents (e.g. from the VAE encoder)"
        )
        return initial_latents  # _new_run moves it to the pipeline's device and dtype

    def _check_noise(
        self,
        noise: torch.Tensor,
        batch: int,
        num_frames: int,
        latent_hw: tuple[int, int] | None,
        initial_frames: int = 0,
    ) -> torch.Tensor:
        """``noise`` of the generated frames: ``[B, num_frames - initial_frames, C, H, W]``."""
        channels = self.model.config.in_dim
        generated = num_frames - initial_frames
        expected = f"[{batch}, {generated}, {channels}, {_hw_text(latent_hw)}]"
        if initial_frames:
            expected += (
                f" (the generated frames only: num_frames={num_frames} less the {initial_frames} "
                "frames of initial_latents)"
            )
        if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
            raise ValueError(f"noise must be a floating tensor {expected}, got {noise!r:.80}")
        shape = tuple(noise.shape)
        if noise.ndim != 5 or shape[:3] != (batch, generated, channels):
            raise ValueError(f"noise must have shape {expected} (batch from text_embeds), got {list(shape)}")
        if latent_hw is not None and shape[3:] != tuple(latent_hw):
            raise ValueError(f"noise must have shape {expected} to match latent_hw, got {list(shape)}")
        _check_finite(
            noise, "noise", "pass finite Gaussian noise, or none (it is then drawn from the generator)"
        )
        return noise

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def _chunks(
        self, run: _Run, save_every: int | None, checkpoint_path: PathLike | None
    ) -> Iterator[ChunkResult]:
        config = self.cache_config
        while config.chunk_start(run.next_chunk) < run.num_frames:
            index = run.next_chunk
            start = config.chunk_start(index)
            chunk = config.chunk_frames_at(start)
            for switch in run.switches:
                if switch.frame == start:
                    self._switch_prompt(run, switch.text_embeds)
            if run.initial is not None:
                latents = run.initial[:, :chunk]
                run.initial = run.initial[:, chunk:] if run.initial.shape[1] > chunk else None
                context_output = self._write_given(run, latents, start)
            else:
                x = run.noise.take(chunk).to(device=self.device, dtype=self.dtype)
                latents, context_output = self._denoise_chunk(run, x, start)
            self._check_chunk(run, index, start, latents, context_output)
            self._remember(run, latents, start)
            run.next_chunk = index + 1
            if save_every is not None and checkpoint_path is not None and run.next_chunk % save_every == 0:
                save_state_file(self._state_of(run), Path(checkpoint_path))
            frames = self.decoder.decode_chunk(latents) if self.decoder is not None else None
            if frames is not None:
                _check_finite(
                    frames,
                    f"the decoded frames of chunk {index} (latent frames {start}-{start + chunk - 1})",
                    "the latents are finite, so check the decoder (its weights and dtype)",
                )
            yield ChunkResult(index=index, start_frame=start, latents=latents, frames=frames)

    def _check_chunk(
        self, run: _Run, index: int, start_frame: int, latents: torch.Tensor, context_output: torch.Tensor
    ) -> None:
        """Refuse a chunk whose clean latents, cache writes or cache memory are not finite.

        Called once per chunk after its clean context call, before anything of the chunk is kept:
        one host sync each for the latents ``[B, f, C, H, W]``, the context call's output (same
        shape; NaN when a key or value in the cache is) and
        :meth:`~memrope.cache.MemRoPECache.check_finite`.
        """
        chunk = f"chunk {index} (latent frames {start_frame}-{start_frame + latents.shape[1] - 1})"
        kept = "nothing of this chunk was yielded or checkpointed"
        _check_finite(
            latents,
            f"the clean latents (x0) of {chunk}",
            f"{kept}. Likely causes: {_NONFINITE_CHUNK_CAUSES}",
        )
        _check_finite(
            context_output,
            f"the output of the clean context call of {chunk} (the call that writes the chunk into the cache)",
            f"the chunk's latents are finite, but the cache now holds non-finite keys or values, which would "
            f"corrupt every later chunk; {kept}. Likely causes: {_NONFINITE_CHUNK_CAUSES}",
        )
        try:
            run.cache.check_finite()
        except NonFiniteError as error:
            raise NonFiniteError(f"after {chunk}: {error}; {kept}") from error

    def _denoise_chunk(
        self, run: _Run, x: torch.Tensor, start_frame: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise one chunk ``x [B, f, C, H, W]`` (pure noise) and commit it to the cache.

        Returns:
            the clean latents ``[B, f, C, H, W]`` and the output of the clean context call that wrote
            them into the cache (same shape; NaN where a key or value it attended to, in the cache
            or the chunk, is NaN).
        """
        batch, frames = x.shape[:2]
        timesteps = self.first_chunk_timesteps if start_frame == 0 else self.timesteps
        steps = timesteps.numel()
        x0 = x
        for step in range(steps):
            t = timesteps[step].expand(batch, frames).clone()
            flow = self.model(x, t, run.context, cache=run.cache, start_frame=start_frame).to(self.device)
            x0 = self.scheduler.to_x0(flow, x, t)
            if step + 1 < steps:
                t_next = timesteps[step + 1].expand(batch, frames)
                x = self.scheduler.add_noise(x0, self._fresh_noise(run, x.shape), t_next)
        t_context = self._context_timesteps(batch, frames)
        cached = self._context_latents(run, x0, t_context)
        context_output = self.model(cached, t_context, run.context, cache=run.cache, start_frame=start_frame)
        return x0, context_output

    def _fresh_noise(self, run: _Run, shape: torch.Size) -> torch.Tensor:
        """Noise ``[B, f, C, H, W]`` from the run's generator, drawn as the official code does (``randn([B*f, C, H, W])``
        in the pipeline dtype on the CPU), then moved to the device."""
        batch, frames = shape[:2]
        fresh = torch.randn((batch * frames, *shape[2:]), generator=run.generator, dtype=self.dtype)
        return fresh.to(self.device).unflatten(0, (batch, frames))

    def _context_latents(self, run: _Run, latents: torch.Tensor, t_context: torch.Tensor) -> torch.Tensor:
        """What a context call writes for clean ``latents`` ``[B, f, C, H, W]``: themselves, or noised to
        ``t_context`` with fresh noise when :attr:`noised_context`."""
        if not self.noised_context:
            return latents
        return self.scheduler.add_noise(latents, self._fresh_noise(run, latents.shape), t_context)

    def _write_given(self, run: _Run, latents: torch.Tensor, start_frame: int) -> torch.Tensor:
        """Commit given clean latents ``[B, f, C, H, W]`` to the cache with a clean call at timestep 0 (as
        Self-Forcing writes its ``initial_latent``); returns the call's output (same shape)."""
        zero = torch.zeros(latents.shape[:2], dtype=torch.float32, device=self.device)
        return self.model(latents, zero, run.context, cache=run.cache, start_frame=start_frame)

    def _switch_prompt(self, run: _Run, text_embeds: torch.Tensor) -> None:
        """Follow ``text_embeds`` from now on: new cross-attention context, window re-encoded (KV re-cache)."""
        run.context = self.model.encode_context(text_embeds)
        first_frame, frames = run.cache.recache_window()
        if frames == 0:
            return
        if run.history is None:
            raise RuntimeError("a prompt switch needs the latents of the cache window, but none were kept")
        history_start = self.cache_config.chunk_start(run.next_chunk) - run.history.shape[1]
        offset = first_frame - history_start
        if offset < 0:
            raise RuntimeError(
                f"the recache window starts at frame {first_frame} but the kept latents start at {history_start}"
            )
        window = run.history[:, offset : offset + frames]
        t_context = self._context_timesteps(*window.shape[:2])
        cached = self._context_latents(run, window, t_context)
        with run.cache.recaching() as (start_frame, _):
            self.model(cached, t_context, run.context, cache=run.cache, start_frame=start_frame)

    def _context_timesteps(self, batch: int, frames: int) -> torch.Tensor:
        """float32 ``[B, F]`` timesteps of the calls that write clean latents into the cache."""
        return torch.full((batch, frames), float(self.context_noise), dtype=torch.float32, device=self.device)

    def _remember(self, run: _Run, latents: torch.Tensor, start_frame: int) -> None:
        """Keep the clean latents a later prompt switch re-encodes (nothing once no switch lies ahead)."""
        if not any(switch.frame > start_frame for switch in run.switches):
            run.history = None
            return
        config = self.cache_config
        kept_frames = config.cache_frames - config.sink_frames if config.bounded else run.num_frames
        history = latents if run.history is None else torch.cat([run.history, latents], dim=1)
        run.history = history[:, -kept_frames:]


def _check_finite(tensor: torch.Tensor, name: str, advice: str = "") -> None:
    """Raise :class:`NonFiniteError` naming ``name`` when ``tensor`` holds NaN or infinity (one host sync)."""
    summary = nonfinite_summary(tensor)
    if summary is None:
        return
    where = ""
    if tensor.ndim >= 2 and tensor.shape[0] > 1:
        flawed = (~torch.isfinite(tensor)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        where = f" (batch items {flawed})"
    raise NonFiniteError(f"{name} holds {summary}{where}" + (f"; {advice}" if advice else ""))


def _model_device(model: CausalVideoModel) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    parameters = getattr(model, "parameters", None)
    if parameters is not None:
        for parameter in parameters():
            return parameter.device
    return torch.device("cpu")


def _make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU torch.Generator (noise is drawn on the CPU), got {generator!r}"
            )
        return generator
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    if seed is not None:
        check_seed(seed)
    fresh = torch.Generator("cpu")
    if seed is None:
        fresh.seed()
    else:
        fresh.manual_seed(seed)
    return fresh


def _first_boundaries(config: MemRoPEConfig) -> str:
    """The first three chunk boundaries after frame 0, for error messages (``"3, 6, 9"``)."""
    return ", ".join(str(config.chunk_start(index)) for index in range(1, 4))


def _hw_text(latent_hw: tuple[int, int] | None) -> str:
    """``"H, W"`` for error messages: the given latent size (checked), or the letters."""
    return "H, W" if latent_hw is None else ", ".join(str(n) for n in _check_latent_hw(latent_hw))


def _check_latent_hw(latent_hw: object) -> tuple[int, int]:
    if (
        not isinstance(latent_hw, (tuple, list))
        or len(latent_hw) != 2
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in latent_hw)
    ):
        raise ValueError(
            f"latent_hw must be a pair of positive ints (H, W), e.g. (60, 104), got {latent_hw!r}"
        )
    return int(latent_hw[0]), int(latent_hw[1])


def _check_checkpointing(save_every: int | None, checkpoint_path: PathLike | None) -> None:
    if save_every is None:
        if checkpoint_path is not None:
            raise ValueError("checkpoint_path needs save_every (a positive int: chunks between checkpoints)")
        return
    if (as_int(save_every) or 0) < 1:
        raise ValueError(
            f"save_every must be a positive int (chunks between checkpoints) or None, got {save_every!r}"
        )
    if checkpoint_path is None:
        raise ValueError("save_every needs checkpoint_path (where to write the checkpoint)")
