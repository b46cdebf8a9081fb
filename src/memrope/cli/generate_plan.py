"""``memrope generate``: the arguments checked together (:func:`plan_generate` -> :class:`Plan`), before
anything heavy is loaded or anything is written."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from memrope._device_spec import parse_device
from memrope._dtypes import dtype_name
from memrope.cli.console import _note
from memrope.cli.lengths import _latent_frames, _made
from memrope.config import MemRoPEConfig
from memrope.devices import DevicePlan, MemoryProbe, NotEnoughMemoryError, plan_devices
from memrope.distributed import DistributedEnv, shard_indices
from memrope.errors import EXIT_FAILURE, CLIError
from memrope.memory_plan import (
    CUDA_OVERHEAD,
    GIB,
    MemoryEstimate,
    cache_supports_kv_dtype,
    estimate_memory,
    kv_dtype_name,
    parse_kv_dtype,
)
from memrope.presets import PRESETS, Preset, families_named, unknown_preset_message
from memrope.prompt_schedule import ScheduledPrompt, parse_prompt_schedule

__all__ = ["Plan", "Video", "plan_generate"]

REPORT_SUFFIX = ".json"
ATTENTION_SUFFIX = ".attention.json"
STATE_SUFFIX = ".resume.safetensors"
LATENTS_SUFFIX = ".resume.latents"
RUN_SUFFIX = ".resume.json"
LOCK_SUFFIX = ".lock"
#: What ``--kv-dtype auto`` stores the cache in when only an 8-bit cache makes ``--placement auto`` fit.
AUTO_KV_FALLBACK = (
    torch.int8
)  # 4x more accurate than fp8 e4m3 at the same size (benchmarks/bench_kv_dtype.py)


@dataclass
class Video:
    """One video of the run."""

    index: int
    prompt: str
    output: Path
    latents_path: Path | None
    action: str = "fresh"  # "fresh", "resume" or "skip"
    embeds: torch.Tensor | None = None
    switches: tuple[ScheduledPrompt, ...] = ()  # later entries of a --prompt-schedule
    switch_embeds: list[torch.Tensor] = field(default_factory=list)
    run_info: dict[str, Any] | None = None  # the run file of the checkpoint being resumed

    @property
    def schedule(self) -> list[dict[str, Any]]:
        """The prompts in force and from which latent frame (one entry without a schedule)."""
        entries = (ScheduledPrompt(0, self.prompt), *self.switches)
        return [{"frame": entry.frame, "prompt": entry.prompt} for entry in entries]

    @property
    def report(self) -> Path:
        return _beside(self.output, REPORT_SUFFIX)

    @property
    def state(self) -> Path:
        return _beside(self.output, STATE_SUFFIX)

    @property
    def latents_log(self) -> Path:
        return _beside(self.output, LATENTS_SUFFIX)

    @property
    def run_file(self) -> Path:
        return _beside(self.output, RUN_SUFFIX)

    @property
    def attention_stats(self) -> Path:
        return _beside(self.output, ATTENTION_SUFFIX)

    @property
    def lock(self) -> Path:
        """The lock file a run holds while it owns this video's outputs."""
        return self.output.with_name(f".{self.output.name}{LOCK_SUFFIX}")


@dataclass
class Plan:
    """A validated ``memrope generate`` invocation."""

    preset: Preset
    checkpoint: str | None
    lora: str | None
    text_encoder: str
    vae: str
    num_frames: int
    cache: MemRoPEConfig
    placement: DevicePlan
    dtype: torch.dtype
    seed: int
    save_every: int | None
    resume: bool
    progress: bool
    attention_stats: bool = False
    videos: list[Video] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    total_videos: int = 1  # over every rank
    requested: dict[str, Any] = field(default_factory=dict)  # the length as asked (--seconds / --num-frames)
    restart: bool = False
    weight_files: list[tuple[str, Path]] = field(default_factory=list)  # (role, local path), once resolved
    backend: str = "memrope"  # the DiT code: memrope's own, or a diffusers WanTransformer3DModel
    kv_dtype: torch.dtype | None = None  # 8-bit storage of the cached keys and values; None: self.dtype
    key_workspace: Literal["per_layer", "shared"] = "per_layer"  # the cache's RoPE'd-key workspace

    @property
    def chunks(self) -> int:
        return self.num_frames // self.cache.chunk_frames

    @property
    def device(self) -> torch.device:
        """Where latents live: the DiT's first device."""
        return self.placement.primary_device

    def signature(self, video: Video) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint."""
        return {
            "model": self.preset.name,
            "checkpoint": self.checkpoint,
            "lora": self.lora,
            "text_encoder": self.text_encoder,
            "prompt": video.prompt,
            "prompt_switches": video.schedule[1:],
            "seed": self.seed,
            "num_frames": self.num_frames,
            "latent_hw": list(self.preset.latent_hw),
            "cache": self.cache.to_dict(),
            "dtype": dtype_name(self.dtype),
            "denoising_steps": list(self.preset.denoising_steps),
            **(
                {}
                if self.preset.first_chunk_denoising_steps is None
                else {"first_chunk_denoising_steps": list(self.preset.first_chunk_denoising_steps)}
            ),
            "shift": self.preset.shift,
            **self._sampler_settings(),
            **({} if self.backend == "memrope" else {"backend": self.backend}),
            **({} if self.kv_dtype is None else {"kv_dtype": dtype_name(self.kv_dtype)}),
            **({} if self.key_workspace == "per_layer" else {"key_workspace": self.key_workspace}),
        }

    def _sampler_settings(self) -> dict[str, Any]:
        """The preset's sampler settings that differ from the official inference's (none for it)."""
        preset = self.preset
        return {
            **({} if preset.warp_denoising_step else {"warp_denoising_step": False}),
            **({} if preset.context_noise == 0.0 else {"context_noise": preset.context_noise}),
            **({"noised_context": True} if preset.noised_context else {}),
        }


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _resolve_preset(name: str) -> Preset:
    """The preset ``name``; a family name (or the start of only one) means that family's first preset."""
    if name in PRESETS:
        return PRESETS[name]
    families = families_named(name)
    if len(families) == 1:
        family = families[0]
        preset = PRESETS[family.preset_name(next(iter(family.lengths)))]
        _note(f"--model {name}: using preset {preset.name} (family {family.name}); --seconds sets the length")
        return preset
    raise CLIError(unknown_preset_message(name))


def _schedule_file(text: str) -> Path | None:
    return Path(text[1:]).expanduser() if text.startswith("@") else None


def _read_schedule(text: str, chunk: int, num_frames: int) -> tuple[ScheduledPrompt, ...]:
    separator = ";"
    path = _schedule_file(text)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM is not part of the first entry
        except (OSError, UnicodeDecodeError) as error:
            raise CLIError(f"cannot read --prompt-schedule file {path}: {error}") from None
        separator = "\n"
    try:
        return parse_prompt_schedule(text, chunk_frames=chunk, num_frames=num_frames, separator=separator)
    except ValueError as error:
        raise CLIError(f"--prompt-schedule: {error}") from None


def _read_prompts(args: argparse.Namespace, preset: Preset) -> list[str]:
    prompts: list[str] = []
    for prompt in args.prompt:
        if not prompt.strip():
            raise CLIError("--prompt must not be empty")
        prompts.append(prompt.strip())
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM is not part of the first prompt
        except FileNotFoundError:
            raise CLIError(f"--prompts-file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise CLIError(f"cannot read --prompts-file {path}: {error}") from None
        lines = [line.strip() for line in text.splitlines()]
        from_file = [line for line in lines if line]
        if not from_file:
            raise CLIError(f"--prompts-file {path} holds no prompt (only blank lines)")
        prompts.extend(from_file)
    if not prompts and preset.unconditional:
        _note(f"--model {preset.name} ignores prompts (it is unconditional): making one video without one")
        return [""]
    if not prompts:
        raise CLIError("no prompt: give --prompt TEXT (repeatable) or --prompts-file PATH")
    return prompts


def _cache_config(args: argparse.Namespace, preset: Preset) -> MemRoPEConfig:
    overrides = {
        name: value
        for name, value in (
            ("policy", args.policy),
            ("alpha_long", args.alpha_long),
            ("alpha_short", args.alpha_short),
            ("cache_frames", args.cache_frames),
            ("sink_frames", args.sink_frames),
            ("protect_sink_on_rewrite", getattr(args, "protect_sink", None)),
        )
        if value is not None
    }
    try:
        return dataclasses.replace(preset.cache, **overrides)
    except (TypeError, ValueError) as error:
        flags = {
            "policy": "--policy",
            "alpha_long": "--alpha-long",
            "alpha_short": "--alpha-short",
            "cache_frames": "--cache-frames",
            "sink_frames": "--sink-frames",
        }
        message = str(error)
        for name, flag in flags.items():
            message = message.replace(name, flag)
        raise CLIError(f"invalid cache settings: {message}") from None


def _device(text: str) -> torch.device:
    try:
        device = parse_device(text, "--device")
    except ValueError:
        raise CLIError(f"unknown --device {text!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {text}: CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise CLIError(f"--device {text}: MPS is not available here")
    elif device.type == "meta":
        raise CLIError(
            f"--device {text} holds no data (only shapes), so it cannot generate; use cpu, cuda, cuda:N or mps"
        )
    elif device.type != "cpu":
        try:
            torch.zeros(1, device=device).add_(1).cpu()
        except Exception:  # noqa: BLE001 (any failure means the device is unusable)
            raise CLIError(
                f"--device {text}: this device is not available here; use cpu, cuda, cuda:N or mps"
            ) from None
    return device


def _check_writable(path: Path, flag: str) -> None:
    """``path`` can be created or replaced: its folder exists and takes a new file (tried, not guessed)."""
    parent = path.parent
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a directory; give a file path")
    if not parent.is_dir():
        raise CLIError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: the folder {parent} is not writable; choose a writable folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise CLIError(f"{flag} {path} exists and is not writable")
    try:  # os.access says yes to root everywhere, and nothing about read-only or odd file systems
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as error:
        raise CLIError(
            f"{flag} {path}: cannot create files in the folder {parent} ({error.strerror or error}); "
            "choose a writable folder"
        ) from None
    os.close(handle)
    os.unlink(probe)


def _numbered(path: Path, index: int, width: int) -> Path:
    return path.with_name(f"{path.stem}_{index:0{width}d}{path.suffix}")


def _file_key(path: Path) -> tuple[Any, ...]:
    """What identifies the file ``path`` names: its inode when it exists, else its resolved path."""
    try:
        status = path.stat()
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(path)))
    return ("inode", status.st_dev, status.st_ino)


def _check_distinct_files(videos: list[Video], attention_stats: bool, inputs: list[tuple[str, Path]]) -> None:
    """Refuse a run two of whose files (outputs, or an output and an input) are one file.

    Symlinks, hard links, ``./x`` and ``x`` are resolved: ``--save-latents`` equal to the video, its
    report or the resume files would silently replace them.
    """
    seen: dict[tuple[Any, ...], str] = {}
    named = [(f"{role} {path}", path) for role, path in inputs]
    for video in videos:
        which = f" of video {video.index}" if len(videos) > 1 else ""
        files = [
            (f"--output {video.output}", video.output),
            (f"the report {video.report}{which}", video.report),
            (f"the checkpoint {video.state}{which}", video.state),
            (f"the latents log {video.latents_log}{which}", video.latents_log),
            (f"the run file {video.run_file}{which}", video.run_file),
            (f"the lock file {video.lock}{which}", video.lock),
        ]
        if video.latents_path is not None:
            files.append((f"--save-latents {video.latents_path}{which}", video.latents_path))
        if attention_stats:
            files.append((f"the attention stats {video.attention_stats}{which}", video.attention_stats))
        named.extend(files)
    for name, path in named:
        key = _file_key(path)
        if key in seen:
            raise CLIError(
                f"{name} and {seen[key]} are the same file ({os.path.realpath(path)}); one would replace "
                "the other: give them different paths"
            )
        seen[key] = name


def _placement_devices(args: argparse.Namespace, env: DistributedEnv) -> list[torch.device] | None:
    """The devices ``--device`` / ``--devices`` name (``None``: every visible GPU), checked against ``--placement``."""
    if env.is_distributed and args.placement != "single":
        raise CLIError("under torchrun every rank runs on its own device: use --placement single")
    if args.placement == "single" and (args.devices is not None or args.split_at is not None):
        raise CLIError("--devices and --split-at need --placement split or auto")
    if args.placement != "single" and args.device is not None:
        raise CLIError(f"--placement {args.placement} takes --devices, not --device")
    if args.placement == "auto" and args.split_at is not None:
        raise CLIError("--split-at needs --placement split")
    if args.placement == "single":
        return [_single_device(args, env)]
    if args.devices is not None:
        return [_device(text.strip()) for text in args.devices.split(",") if text.strip()]
    return None


def _memory_estimate(
    args: argparse.Namespace,
    preset: Preset,
    cache: MemRoPEConfig,
    num_frames: int,
    dtype: torch.dtype | None,
    kv_dtype: torch.dtype | None,
) -> MemoryEstimate:
    """The run's GPU memory (``--cache-*``, ``--text-encoder``, ``--vae`` and the length included), text
    encoder counted on the GPU (:func:`memrope.devices.plan_devices` drops it when it runs on the CPU)."""
    return estimate_memory(
        preset.model_config,
        cache,
        preset.latent_hw,
        dtype=preset.default_dtype if dtype is None else dtype,
        kv_dtype=kv_dtype,
        key_workspace=getattr(args, "key_workspace", "per_layer"),
        text_encoder=args.text_encoder or preset.text_encoder,
        vae=args.vae or preset.vae,
        latent_frames=num_frames,
        overhead=0 if preset.runs_locally else CUDA_OVERHEAD,
    )


def _placement(
    args: argparse.Namespace,
    preset: Preset,
    dtype: torch.dtype | None,
    env: DistributedEnv,
    cache: MemRoPEConfig | None = None,
    num_frames: int | None = None,
    probe: MemoryProbe | None = None,
) -> tuple[DevicePlan, torch.dtype | None]:
    """Where the DiT, its cache, the text encoder and the VAE go, and the cache's storage dtype.

    ``--kv-dtype auto`` keeps the model dtype, except with ``--placement auto`` where no layout fits with
    it but one fits with an 8-bit cache: then int8 (the most accurate 8-bit format), said in a note line. The memory plan
    (``--kv-dtype``, ``--text-encoder-device``) is estimated whenever a GPU is in play; ``probe`` answers
    which GPUs there are and their free memory (default: CUDA's).
    """
    devices = _placement_devices(args, env)
    cache = preset.cache if cache is None else cache
    num_frames = preset.latent_frames if num_frames is None else num_frames
    requested_kv = None if args.kv_dtype == "auto" else parse_kv_dtype(args.kv_dtype, "--kv-dtype")
    on_gpu = devices is None or any(device.type == "cuda" for device in devices)
    candidates: list[torch.dtype | None] = [requested_kv]
    if args.kv_dtype == "auto" and args.placement == "auto" and cache_supports_kv_dtype():
        candidates.append(AUTO_KV_FALLBACK)
    error: NotEnoughMemoryError | None = None
    for kv_dtype in candidates:
        memory = _memory_estimate(args, preset, cache, num_frames, dtype, kv_dtype) if on_gpu else None
        try:
            plan = plan_devices(
                args.placement,
                devices,
                num_layers=preset.model_config.num_layers,
                offload=args.offload,
                split_at=args.split_at,
                memory=memory,
                probe=probe,
                text_encoder=args.text_encoder_device,
            )
        except NotEnoughMemoryError as not_enough:
            error = not_enough  # the last: with the smallest cache tried
            continue
        except (TypeError, ValueError) as bad:
            message = str(bad).replace("split_at", "--split-at").replace("devices", "--devices")
            raise CLIError(f"--placement {args.placement}: {message}") from None
        if kv_dtype is not requested_kv and env.rank == 0:
            stored = f"{kv_dtype_name(kv_dtype)} ({dtype_name(kv_dtype)})" if kv_dtype is not None else "bf16"
            _note(
                f"note: --kv-dtype auto: the run fits only with an 8-bit cache, so the keys and values are stored "
                f"as {stored}; pass --kv-dtype bf16 to refuse"
            )
        return plan, kv_dtype
    assert error is not None
    tried = " (with an fp8 cache: --kv-dtype auto tried bf16 first)" if len(candidates) > 1 else ""
    raise CLIError(f"--placement auto{tried}: {error}", EXIT_FAILURE) from None


def _note_memory(
    plan: DevicePlan, dtype: torch.dtype, kv_dtype: torch.dtype | None, env: DistributedEnv
) -> None:
    """A note line with the memory plan of a run on a GPU: per-device peaks, cache storage, text encoder."""
    if env.rank != 0 or plan.needed_bytes is None or plan.primary_device.type == "cpu":
        return
    needs = " + ".join(f"{need / GIB:.1f}" for need in plan.needed_bytes)
    text = "the CPU" if plan.text_encoder_device.type == "cpu" else str(plan.text_encoder_device)
    _note(
        f"note: memory plan: ~{needs} GiB on {', '.join(str(d) for d in plan.devices)} (estimate), KV cache "
        f"{dtype_name(dtype if kv_dtype is None else kv_dtype)}, text encoder on {text}"
    )


def _input_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """Local files the run reads, which no output may replace."""
    inputs: list[tuple[str, Path]] = []
    if args.prompts_file is not None:
        inputs.append(("--prompts-file", Path(args.prompts_file)))
    schedule = _schedule_file(args.prompt_schedule) if args.prompt_schedule is not None else None
    if schedule is not None:
        inputs.append(("--prompt-schedule", schedule))
    for flag, source in (("--checkpoint", args.checkpoint), ("--lora", args.lora)):
        if source is not None and Path(source).expanduser().is_file():
            inputs.append((flag, Path(source).expanduser()))
    return inputs


def _single_device(args: argparse.Namespace, env: DistributedEnv) -> torch.device:
    """``--device``; else ``cuda:LOCAL_RANK`` (``cuda:0`` outside torchrun) with CUDA, else the CPU."""
    if args.device is not None:
        return _device(args.device)
    return torch.device(f"cuda:{env.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _check_length(cache: MemRoPEConfig, num_frames: int, asked: str) -> None:
    """Refuse a length ``--policy full`` cannot hold (it keeps every frame, up to the RoPE table)."""
    chunk = cache.chunk_frames
    if not cache.bounded and num_frames > cache.max_positions:
        longest = cache.max_positions // chunk * chunk
        raise CLIError(
            f"--policy full keeps every frame and supports at most {cache.max_positions} latent frames "
            f"(the RoPE table); {asked} needs {num_frames}. The longest in whole chunks is --num-frames "
            f"{longest} ({_made(longest)}); use --policy memrope for longer videos"
        )


def _prompts_and_schedule(
    args: argparse.Namespace, preset: Preset, chunk: int, num_frames: int
) -> tuple[list[str], tuple[ScheduledPrompt, ...]]:
    """The prompts (one video each; an unconditional preset's one video has the prompt ``""`` when
    none is given) and, with ``--prompt-schedule``, its entries."""
    if args.prompt_schedule is None:
        return _read_prompts(args, preset), ()
    if args.prompt or args.prompts_file is not None:
        raise CLIError(
            "--prompt-schedule describes one video; do not combine it with --prompt or --prompts-file"
        )
    schedule = _read_schedule(args.prompt_schedule, chunk, num_frames)
    return [schedule[0].prompt], schedule


def _this_ranks_videos(
    args: argparse.Namespace, prompts: list[str], schedule: tuple[ScheduledPrompt, ...], env: DistributedEnv
) -> list[Video]:
    """Every video's files, checked writable and distinct; returns this rank's share of the videos."""
    output = Path(args.output).expanduser()
    latents = Path(args.save_latents).expanduser() if args.save_latents else None
    numbered = len(prompts) > 1 or args.prompts_file is not None
    width = len(str(len(prompts) - 1))
    videos = []
    for index, prompt in enumerate(prompts):
        video_path = _numbered(output, index, width) if numbered else output
        latents_path = None
        if latents is not None:
            latents_path = _numbered(latents, index, width) if numbered else latents
        videos.append(Video(index, prompt, video_path, latents_path, switches=schedule[1:]))
    _check_writable(output, "--output")
    if latents is not None:
        _check_writable(latents, "--save-latents")
    _check_distinct_files(videos, args.attention_stats, _input_files(args))
    videos = [
        video
        for index, video in enumerate(videos)
        if index in shard_indices(len(videos), env.rank, env.world_size)
    ]
    for video in videos:
        _check_writable(video.output, "--output")
    return videos


def _note_plan(
    args: argparse.Namespace,
    env: DistributedEnv,
    asked: str,
    num_frames: int,
    chunk: int,
    schedule: tuple[ScheduledPrompt, ...],
) -> None:
    """The note lines: what the length request makes, schedule starts moved, a --resume that will not save."""
    if args.resume and args.save_every is None:
        _note("--resume without --save-every: the resumed run will not write new checkpoints")
    if env.rank == 0:
        _note(f"note: {asked} -> {_made(num_frames)} (whole chunks of {chunk})")
        moved = [
            f"{entry.requested:g} -> {entry.frame}"
            for entry in schedule
            if entry.requested is not None and entry.requested != entry.frame
        ]
        if moved:
            _note(
                f"note: --prompt-schedule starts moved to the next chunk boundary (latent frames): {', '.join(moved)}"
            )


def plan_generate(args: argparse.Namespace, env: DistributedEnv | None = None) -> Plan:
    """Validate a ``memrope generate`` invocation; raises :class:`CLIError`. Writes nothing.

    Under ``torchrun`` (``env`` with several ranks) the plan holds this rank's share of the videos.
    What each video does (start, resume, skip) is decided later, under its lock
    (:func:`memrope.cli.outputs._prepare_videos`).
    """
    env = DistributedEnv() if env is None else env
    preset = _resolve_preset(args.model)
    cache = _cache_config(args, preset)
    chunk = cache.chunk_frames
    num_frames, requested, asked = _latent_frames(args, preset, chunk)
    _check_length(cache, num_frames, asked)
    prompts, schedule = _prompts_and_schedule(args, preset, chunk, num_frames)
    placement, kv_dtype = _placement(args, preset, args.dtype, env, cache, num_frames)
    dtype = args.dtype
    if dtype is None:
        dtype = preset.default_dtype if placement.primary_device.type != "cpu" else torch.float32
    if args.lora is not None and args.checkpoint is None:
        raise CLIError("--lora needs --checkpoint (the registered presets bring their own LoRA)")
    if args.backend == "diffusers" and importlib.util.find_spec("diffusers") is None:
        raise CLIError("--backend diffusers needs diffusers: pip install 'memrope[diffusers]'")
    videos = _this_ranks_videos(args, prompts, schedule, env)
    _note_plan(args, env, asked, num_frames, chunk, schedule)
    _note_memory(placement, dtype, kv_dtype, env)
    return Plan(
        preset=preset,
        checkpoint=args.checkpoint if args.checkpoint is not None else preset.checkpoint,
        lora=args.lora,
        text_encoder=args.text_encoder or preset.text_encoder,
        vae=args.vae or preset.vae,
        num_frames=num_frames,
        cache=cache,
        placement=placement,
        dtype=dtype,
        seed=args.seed,
        save_every=args.save_every,
        resume=args.resume,
        progress=not args.no_progress and env.rank == 0,
        attention_stats=args.attention_stats,
        videos=videos,
        rank=env.rank,
        world_size=env.world_size,
        total_videos=len(prompts),
        requested=requested,
        restart=args.restart,
        backend=args.backend,
        kv_dtype=kv_dtype,
        key_workspace=args.key_workspace,
    )
