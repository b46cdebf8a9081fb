"""Command line: ``memrope generate`` (text -> mp4 with a fixed-size MemRoPE cache) and ``memrope presets``.

Subcommands are registered in :data:`COMMANDS` (name, help, ``configure(parser)``, ``run(args) ->
exit code``); :func:`register_command` adds one (e.g. ``plot-attention``).

``memrope generate`` in short::

    memrope generate --model tiny --prompt "a red fox running through snow" --output fox.mp4
    memrope generate --model self-forcing-60s --prompts-file prompts.txt --output out/video.mp4 \\
        --save-every 20 --resume

* One video per prompt, generated one after the other with the same seed. A single ``--prompt``
  writes ``OUTPUT``; several prompts (repeated ``--prompt`` or ``--prompts-file``, one prompt per
  line, blank lines ignored) write ``OUTPUT_STEM_<i>.mp4`` (``i`` from 0, zero-padded to the width
  of the last index) beside ``OUTPUT``.
* Every video gets a JSON report ``<video>.json`` (frames, seconds, wall time, chunks/s, cache
  layout and resident bytes, peak memory).
* ``--save-every N`` checkpoints the run every ``N`` chunks next to the video
  (``<video>.resume.safetensors``: the pipeline state; ``<video>.resume.latents``: the latents so
  far, raw, so the video can be re-decoded exactly; ``<video>.resume.json``: the run's settings).
  ``--resume`` continues from there (same arguments) and gives the same video as an uninterrupted
  run; without a checkpoint it starts from the beginning, and a video whose report says it is
  complete is skipped. The files are removed when a video is complete.
* The first Ctrl-C (or SIGTERM) stops at the end of the current chunk: the video so far is finalised
  into a playable mp4, a checkpoint is written (with ``--save-every``) and the exit status is 130. A
  second Ctrl-C aborts at once. Errors never touch an existing output before the first frame is
  written, and the video is written under a temporary name and moved into place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memrope import diagnostics
from memrope.config import POLICIES, MemRoPEConfig
from memrope.devices import DevicePlan, NotEnoughMemoryError, plan_devices
from memrope.distributed import DistributedContext, DistributedEnv, shard_indices
from memrope.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CLIError
from memrope.presets import FPS, PRESETS, TEMPORAL_FACTOR, Preset, presets_table
from memrope.schedule import ScheduledPrompt, parse_prompt_schedule

__all__ = ["COMMANDS", "CLIError", "Command", "build_parser", "main", "register_command"]


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
REPORT_SUFFIX = ".json"
ATTENTION_SUFFIX = ".attention.json"
STATE_SUFFIX = ".resume.safetensors"
LATENTS_SUFFIX = ".resume.latents"
RUN_SUFFIX = ".resume.json"
REPORT_FORMAT = "memrope.generate_report"
PLACEMENTS = ("single", "split", "auto")
RUN_FORMAT = "memrope.generate_run"


# --------------------------------------------------------------------------------------------------
# Subcommand table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A subcommand: ``configure`` adds its arguments, ``run`` does the work and returns the exit code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """Add (or replace) a subcommand of ``memrope``."""
    COMMANDS[command.name] = command
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memrope",
        description="Unbounded-length text-to-video with a fixed-size MemRoPE KV cache.",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the Python traceback of an unexpected error"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.configure(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``memrope`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return command.run(args)
    except CLIError as error:
        _print_error(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        _print_error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:  # never a traceback unless asked for
        if args.traceback:
            raise
        _print_error(f"{type(error).__name__}: {error} (run with --traceback for details)")
        return EXIT_FAILURE


def _print_error(message: str) -> None:
    print(f"memrope: error: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(f"memrope: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# memrope presets
# --------------------------------------------------------------------------------------------------


def _configure_presets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the presets as JSON")


def _run_presets(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([preset.to_dict() for preset in PRESETS.values()], indent=2))
    else:
        print(presets_table())
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# memrope generate: arguments
# --------------------------------------------------------------------------------------------------

GENERATE_DESCRIPTION = """\
Generate videos chunk by chunk with a fixed-size KV cache and write them as mp4 files, each with a
JSON report beside it (<video>.json).

One video per prompt, generated one after the other with the same seed: a single --prompt writes
OUTPUT; several prompts (repeated --prompt, or --prompts-file with one prompt per line, blank lines
ignored) write OUTPUT_STEM_<i>.mp4 beside OUTPUT.

Length: --num-frames counts latent frames (a multiple of the chunk, 3); N latent frames decode to
4N-3 video frames at 16 fps, so --seconds S means 4*S latent frames (30 s = 120).

Prompt switches: --prompt-schedule "0:a cat sits;120:the cat jumps" makes one video whose prompt
changes at latent frame 120 (or 30s): the cross-attention context is recomputed and the cache window
after the sink is re-encoded under the new prompt, while the sink and the memory tokens keep the past.

Interrupting: the first Ctrl-C stops after the current chunk and leaves a playable mp4 (and a
checkpoint with --save-every); run the same command with --resume to continue.

examples:
  memrope generate --model tiny --prompt "a red fox running through snow" --output fox.mp4
  memrope generate --model self-forcing-60s --prompt "..." --output sf.mp4 --save-every 20 --resume
  memrope generate --model longlive-1h --prompts-file MovieGenVideoBench.txt --output out/v.mp4
  memrope generate --model longlive-60s --prompt-schedule "0:a cat sits;30s:the cat jumps" -o cat.mp4
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _dtype(text: str) -> torch.dtype:
    try:
        return DTYPES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {text!r}; choose float32, bfloat16 or float16 (or fp32, bf16, fp16)"
        ) from None


def _configure_generate(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", "--preset", dest="model", default="tiny", metavar="NAME",
        help="'tiny' (built in, no download) or an official preset such as self-forcing-60s or "
        "longlive-1h (see `memrope presets`); default: tiny",
    )
    model.add_argument(
        "--checkpoint", metavar="PATH_OR_SOURCE",
        help="DiT weights instead of the preset's: a local file/folder, hf://owner/name/path or a "
        "registered name (self-forcing, longlive, wan2.1-t2v-1.3b)",
    )
    model.add_argument(
        "--lora", metavar="PATH_OR_SOURCE",
        help="PEFT LoRA merged into --checkpoint (LongLive's lora.pt with a local longlive_base.pt)",
    )
    model.add_argument(
        "--text-encoder", metavar="SOURCE",
        help="'hash' or a Hub id / local folder in the Diffusers layout holding umT5 (default: the preset's)",
    )
    model.add_argument(
        "--vae", metavar="SOURCE",
        help="'tiny' or a Hub id / local folder in the Diffusers layout holding the Wan VAE "
        "(default: the preset's)",
    )
    model.add_argument("--list-presets", action="store_true", help="print the presets and exit")

    prompts = parser.add_argument_group("prompts")
    prompts.add_argument(
        "--prompt", action="append", default=[], metavar="TEXT",
        help="a prompt (repeat for several videos)",
    )
    prompts.add_argument(
        "--prompts-file", metavar="PATH",
        help="UTF-8 text file, one prompt per line, blank lines ignored (e.g. MovieGenBench)",
    )
    prompts.add_argument(
        "--prompt-schedule", metavar="SCHEDULE",
        help="one video whose prompt changes mid-video (LongLive-style KV re-cache): START:PROMPT "
        "entries separated by ';', START a latent frame (120) or seconds (30s), the first at 0, e.g. "
        "\"0:a cat sits;120:the cat jumps\"; or @FILE with one entry per line",
    )

    length = parser.add_argument_group("length and sampling")
    frames = length.add_mutually_exclusive_group()
    frames.add_argument(
        "--num-frames", type=_positive_int, metavar="N",
        help="latent frames, a multiple of the chunk (3); default: the preset's",
    )
    frames.add_argument(
        "--seconds", type=_finite_float, metavar="S",
        help="video length in seconds at 16 fps (4*S latent frames, e.g. 60 -> 240)",
    )
    length.add_argument("--seed", type=_nonnegative_int, default=0, help="noise seed (default 0)")

    cache = parser.add_argument_group("cache")
    cache.add_argument("--policy", choices=POLICIES, help="cache policy (default: memrope)")
    cache.add_argument("--alpha-long", type=_finite_float, metavar="A", help="long-term EMA rate (0.01)")
    cache.add_argument("--alpha-short", type=_finite_float, metavar="A", help="short-term EMA rate (0.1)")
    cache.add_argument("--cache-frames", type=_positive_int, metavar="N", help="cache size in latent frames (12)")
    cache.add_argument("--sink-frames", type=_nonnegative_int, metavar="N", help="sink frames (3)")

    devices = parser.add_argument_group("devices")
    devices.add_argument(
        "--device", help="cpu, cuda, cuda:1, ... (default: cuda if available; under torchrun cuda:LOCAL_RANK)"
    )
    devices.add_argument(
        "--placement", choices=PLACEMENTS, default="single",
        help="single: everything on --device; split: the DiT's blocks over --devices (official 2-GPU "
        "layout: embeddings + first half of the blocks on the first, the rest, the head and the VAE on "
        "the last, each layer's cache beside its block); auto: the first of single / single with "
        "--offload / split that fits in the free GPU memory (default: single)",
    )
    devices.add_argument(
        "--devices", metavar="DEV,DEV,...",
        help="devices for --placement split or auto, e.g. cuda:0,cuda:1 (auto default: every visible GPU)",
    )
    devices.add_argument(
        "--split-at", type=_positive_int, metavar="N",
        help="with --placement split over 2 devices: the first block on the second device (default: half)",
    )
    devices.add_argument(
        "--offload", action="store_true",
        help="keep the text encoder and the VAE on the CPU between uses (less GPU memory, a little slower)",
    )

    output = parser.add_argument_group("output and running")
    output.add_argument(
        "--output", "-o", default="memrope.mp4", metavar="PATH",
        help="mp4 to write (default memrope.mp4); the report goes to PATH.json",
    )
    output.add_argument(
        "--save-latents", metavar="PATH",
        help="also write the latents [1, F, 16, H, W] as safetensors (key 'latents')",
    )
    output.add_argument(
        "--dtype", type=_dtype, metavar="DTYPE",
        help="float32, bfloat16 or float16 (default: bfloat16 for official presets on GPU, else float32)",
    )
    output.add_argument(
        "--save-every", type=_positive_int, metavar="N",
        help="checkpoint every N chunks next to the output (for --resume)",
    )
    output.add_argument(
        "--resume", action="store_true",
        help="continue from the checkpoint next to the output (same arguments); start afresh without one",
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument(
        "--attention-stats", action="store_true",
        help="record the attention share of sink / long / short memory / recent / current slots per layer "
        "and call into <video>.attention.json (plot it with `memrope plot-attention`); costs one extra "
        "softmax over the cache per attention call (after --resume: the chunks of the resumed run)",
    )


# --------------------------------------------------------------------------------------------------
# memrope generate: validation (everything is checked before anything heavy is loaded)
# --------------------------------------------------------------------------------------------------


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
            "dtype": _dtype_name(self.dtype),
            "denoising_steps": list(self.preset.denoising_steps),
            "shift": self.preset.shift,
        }


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _seconds_of(latent_frames: int) -> float:
    return latent_frames * TEMPORAL_FACTOR / FPS


def _video_frames(latent_frames: int) -> int:
    return 0 if latent_frames == 0 else TEMPORAL_FACTOR * (latent_frames - 1) + 1


def _resolve_preset(name: str) -> Preset:
    if name in PRESETS:
        return PRESETS[name]
    raise CLIError(f"unknown model/preset {name!r}; valid presets: {', '.join(PRESETS)}")


def _read_schedule(text: str, chunk: int, num_frames: int) -> tuple[ScheduledPrompt, ...]:
    separator = ";"
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CLIError(f"cannot read --prompt-schedule file {path}: {error}") from None
        separator = "\n"
    try:
        return parse_prompt_schedule(text, chunk_frames=chunk, num_frames=num_frames, separator=separator)
    except ValueError as error:
        raise CLIError(f"--prompt-schedule: {error}") from None


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts: list[str] = []
    for prompt in args.prompt:
        if not prompt.strip():
            raise CLIError("--prompt must not be empty")
        prompts.append(prompt.strip())
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CLIError(f"--prompts-file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise CLIError(f"cannot read --prompts-file {path}: {error}") from None
        lines = [line.strip() for line in text.splitlines()]
        from_file = [line for line in lines if line]
        if not from_file:
            raise CLIError(f"--prompts-file {path} holds no prompt (only blank lines)")
        prompts.extend(from_file)
    if not prompts:
        raise CLIError("no prompt: give --prompt TEXT (repeatable) or --prompts-file PATH")
    return prompts


def _latent_frames(args: argparse.Namespace, preset: Preset, chunk: int) -> int:
    if args.seconds is not None:
        seconds = args.seconds
        latent = seconds * FPS / TEMPORAL_FACTOR
        if seconds <= 0 or abs(latent - round(latent)) > 1e-9:
            raise CLIError(
                f"--seconds must be a positive multiple of {TEMPORAL_FACTOR / FPS} s (one latent frame "
                f"is {TEMPORAL_FACTOR} frames at {FPS} fps), got {seconds:g}"
            )
        frames = round(latent)
        if frames % chunk:
            raise CLIError(
                f"--seconds {seconds:g} means {frames} latent frames, which is not a multiple of the "
                f"chunk ({chunk} latent frames); nearest valid: {_suggest(frames, chunk, seconds=True)}"
            )
        return frames
    if args.num_frames is None:
        return preset.latent_frames
    frames = args.num_frames
    if frames % chunk:
        raise CLIError(
            f"--num-frames {frames} is not a multiple of the chunk ({chunk} latent frames); "
            f"nearest valid: {_suggest(frames, chunk, seconds=False)}"
        )
    return frames


def _suggest(frames: int, chunk: int, *, seconds: bool) -> str:
    lower = frames // chunk * chunk
    candidates = [n for n in (lower, lower + chunk) if n >= chunk]

    def describe(n: int) -> str:
        if seconds:
            return f"--seconds {_seconds_of(n):g} ({n} latent frames)"
        return f"--num-frames {n} ({_video_frames(n)} video frames, {_seconds_of(n):g} s)"

    return " or ".join(describe(n) for n in candidates)


def _cache_config(args: argparse.Namespace, preset: Preset) -> MemRoPEConfig:
    overrides = {
        name: value
        for name, value in (
            ("policy", args.policy),
            ("alpha_long", args.alpha_long),
            ("alpha_short", args.alpha_short),
            ("cache_frames", args.cache_frames),
            ("sink_frames", args.sink_frames),
        )
        if value is not None
    }
    try:
        return dataclasses.replace(preset.cache, **overrides)
    except (TypeError, ValueError) as error:
        flags = {
            "policy": "--policy", "alpha_long": "--alpha-long", "alpha_short": "--alpha-short",
            "cache_frames": "--cache-frames", "sink_frames": "--sink-frames",
        }
        message = str(error)
        for name, flag in flags.items():
            message = message.replace(name, flag)
        raise CLIError(f"invalid cache settings: {message}") from None


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown --device {text!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {text}: CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise CLIError(f"--device {text}: MPS is not available here")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except Exception:  # noqa: BLE001 (any failure means the device is unusable)
            raise CLIError(f"--device {text}: this device is not available here") from None
    return device


def _check_writable(path: Path, flag: str) -> None:
    parent = path.parent
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a directory; give a file path")
    if not parent.is_dir():
        raise CLIError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: the folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise CLIError(f"{flag} {path} exists and is not writable")


def _numbered(path: Path, index: int, width: int) -> Path:
    return path.with_name(f"{path.stem}_{index:0{width}d}{path.suffix}")


def _check_resume_file(video: Video, plan: Plan) -> str:
    """What to do with ``video`` under ``--resume``: ``"resume"``, ``"skip"`` or ``"fresh"``."""
    signature = plan.signature(video)
    if video.state.exists():
        try:
            saved = json.loads(video.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CLIError(
                f"cannot resume {video.output}: {video.run_file} is missing or unreadable; "
                f"delete {video.state} to start over"
            ) from None
        if saved.get("format") != RUN_FORMAT:
            raise CLIError(f"cannot resume {video.output}: {video.run_file} is not a memrope run file")
        differences = [
            f"{name}: checkpoint {saved['signature'].get(name)!r}, now {value!r}"
            for name, value in signature.items()
            if saved["signature"].get(name) != value
        ]
        if differences:
            raise CLIError(
                f"cannot resume {video.output}: the checkpoint {video.state} was written with other "
                f"settings ({'; '.join(differences)}); rerun with the same arguments or delete "
                f"{video.state} to start over"
            )
        return "resume"
    if video.output.exists() and video.report.exists():
        try:
            report = json.loads(video.report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "fresh"
        if report.get("complete") and report.get("signature") == signature:
            return "skip"
    return "fresh"


def _placement(args: argparse.Namespace, preset: Preset, dtype: torch.dtype | None, env: DistributedEnv) -> DevicePlan:
    """Where the DiT, its cache, the text encoder and the VAE go (``--device`` / ``--placement`` / ...)."""
    if env.is_distributed and args.placement != "single":
        raise CLIError("under torchrun every rank runs on its own device: use --placement single")
    if args.placement == "single" and (args.devices is not None or args.split_at is not None):
        raise CLIError("--devices and --split-at need --placement split or auto")
    if args.placement != "single" and args.device is not None:
        raise CLIError(f"--placement {args.placement} takes --devices, not --device")
    if args.placement == "auto" and args.split_at is not None:
        raise CLIError("--split-at needs --placement split")
    devices: list[torch.device] | None = None
    if args.placement == "single":
        devices = [_single_device(args, env)]
    elif args.devices is not None:
        devices = [_device(text.strip()) for text in args.devices.split(",") if text.strip()]
    layers = preset.model_config.num_layers
    memory = preset.memory_estimate(dtype) if args.placement == "auto" else None
    try:
        return plan_devices(
            args.placement, devices, num_layers=layers, offload=args.offload, split_at=args.split_at, memory=memory
        )
    except NotEnoughMemoryError as error:
        raise CLIError(f"--placement auto: {error}", EXIT_FAILURE) from None
    except (TypeError, ValueError) as error:
        message = str(error).replace("split_at", "--split-at").replace("devices", "--devices")
        raise CLIError(f"--placement {args.placement}: {message}") from None


def plan_generate(args: argparse.Namespace, env: DistributedEnv | None = None) -> Plan:
    """Validate a ``memrope generate`` invocation; raises :class:`CLIError`.

    Under ``torchrun`` (``env`` with several ranks) the plan holds this rank's share of the videos.
    """
    env = DistributedEnv() if env is None else env
    preset = _resolve_preset(args.model)
    cache = _cache_config(args, preset)
    chunk = cache.chunk_frames
    num_frames = _latent_frames(args, preset, chunk)
    if not cache.bounded and num_frames > cache.max_positions:
        raise CLIError(
            f"--policy full keeps every frame and supports at most {cache.max_positions} latent frames "
            f"(the RoPE table), got {num_frames}; use --policy memrope for longer videos"
        )
    schedule: tuple[ScheduledPrompt, ...] = ()
    if args.prompt_schedule is not None:
        if args.prompt or args.prompts_file is not None:
            raise CLIError("--prompt-schedule describes one video; do not combine it with --prompt or --prompts-file")
        schedule = _read_schedule(args.prompt_schedule, chunk, num_frames)
        prompts = [schedule[0].prompt]
    else:
        prompts = _read_prompts(args)
    placement = _placement(args, preset, args.dtype, env)
    dtype = args.dtype
    if dtype is None:
        dtype = preset.default_dtype if placement.primary_device.type != "cpu" else torch.float32
    if args.lora is not None and args.checkpoint is None:
        raise CLIError("--lora needs --checkpoint (the registered presets bring their own LoRA)")
    if args.resume and args.save_every is None:
        _note("--resume without --save-every: the resumed run will not write new checkpoints")
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
    videos = [video for index, video in enumerate(videos) if index in shard_indices(len(videos), env.rank, env.world_size)]
    for video in videos:
        _check_writable(video.output, "--output")
    plan = Plan(
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
    )
    for video in videos:
        if args.resume:
            video.action = _check_resume_file(video, plan)
        elif video.state.exists():
            _note(f"{video.state} exists from an interrupted run; it is replaced (pass --resume to continue it)")
    return plan


# --------------------------------------------------------------------------------------------------
# memrope generate: loading
# --------------------------------------------------------------------------------------------------


def _resolve_weights(plan: Plan) -> None:
    """Find (or download) the checkpoint before anything else, so a missing file fails fast."""
    if plan.checkpoint is None:
        return
    from memrope.loading import CHECKPOINTS, resolve_checkpoint

    try:
        resolve_checkpoint(plan.checkpoint)
        entry = CHECKPOINTS.get(plan.checkpoint) if not Path(plan.checkpoint).exists() else None
        if plan.lora is not None:
            resolve_checkpoint(plan.lora)
        elif entry is not None and entry.lora is not None:
            resolve_checkpoint(entry.lora.uri)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(f"checkpoint not available: {error}", EXIT_FAILURE) from None


def _load_text_encoder(plan: Plan) -> Any:
    from memrope.components import load_text_encoder

    try:
        return load_text_encoder(
            plan.preset,
            plan.text_encoder,
            device=plan.placement.text_encoder_device,
            offload=plan.placement.offload_text_encoder,
        )
    except ImportError as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    except (OSError, ValueError) as error:
        raise CLIError(
            f"could not load the umT5 text encoder from {plan.text_encoder!r}: {error}. Download it with "
            f"`huggingface-cli download {plan.text_encoder} --include 'text_encoder/*' 'tokenizer/*'` "
            "or pass --text-encoder LOCAL_FOLDER",
            EXIT_FAILURE,
        ) from None


def _prompt_embeds(encoder: Any, prompt: str, config: Any) -> torch.Tensor:
    """``[1, L, text_dim]`` CPU embeddings of ``prompt`` with the trailing (zero) padding rows dropped."""
    embeds = encoder.encode([prompt]).float().cpu()
    if embeds.ndim != 3 or embeds.shape[1] > config.text_len or embeds.shape[2] != config.text_dim:
        raise CLIError(
            f"the text encoder gives {list(embeds.shape)} embeddings but the model needs "
            f"[1, <= {config.text_len}, {config.text_dim}]",
            EXIT_FAILURE,
        )
    used = embeds[0].abs().sum(dim=-1).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return embeds[:, :length].contiguous()


def _encode_prompts(plan: Plan, videos: list[Video]) -> None:
    """Text embeddings of the videos to start (and of their prompt switches), on the CPU.

    The DiT zero-pads embeddings back to ``text_len``, so dropping the (exactly zero) padding rows
    changes nothing and keeps the embeddings small; the encoder is freed afterwards.
    """
    if not videos:
        return
    encoder = _load_text_encoder(plan)
    config = plan.preset.model_config
    for video in videos:
        video.embeds = _prompt_embeds(encoder, video.prompt, config)
        video.switch_embeds = [_prompt_embeds(encoder, entry.prompt, config) for entry in video.switches]
    del encoder
    if plan.placement.text_encoder_device.type == "cuda":
        torch.cuda.empty_cache()


def _load_model(plan: Plan) -> torch.nn.Module:
    from memrope.components import load_model

    try:
        return load_model(
            plan.preset, checkpoint=plan.checkpoint, lora=plan.lora, dtype=plan.dtype, placement=plan.placement
        )
    except (FileNotFoundError, ValueError) as error:  # CheckpointKeyError/FormatError are ValueErrors
        raise CLIError(f"cannot load the checkpoint {plan.checkpoint!r}: {error}", EXIT_FAILURE) from None


def _load_decoder(plan: Plan) -> Any:
    from memrope.components import load_decoder

    try:
        return load_decoder(
            plan.preset, plan.vae, device=plan.placement.vae_device, offload=plan.placement.offload_vae
        )
    except ImportError as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    except (OSError, ValueError) as error:
        if plan.vae == "tiny":
            raise CLIError(f"--vae tiny: {error}") from None
        raise CLIError(
            f"could not load the Wan VAE from {plan.vae!r}: {error}. Download it with "
            f"`huggingface-cli download {plan.vae} --include 'vae/*'` or pass --vae LOCAL_FOLDER",
            EXIT_FAILURE,
        ) from None


# --------------------------------------------------------------------------------------------------
# memrope generate: running
# --------------------------------------------------------------------------------------------------


class LatentLog:
    """Append-only raw latents of one video (one latent frame = ``C*H*W`` elements of ``dtype``)."""

    def __init__(self, path: Path, frame_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.path = path
        self.frame_shape = frame_shape
        self.dtype = dtype
        self.frame_bytes = math.prod(frame_shape) * torch.empty(0, dtype=dtype).element_size()
        path.touch(exist_ok=True)
        self._file = open(path, "r+b")  # noqa: SIM115 (closed in close())
        self._file.seek(0, os.SEEK_END)

    @property
    def frames(self) -> int:
        return os.fstat(self._file.fileno()).st_size // self.frame_bytes

    def truncate(self, frames: int) -> None:
        self._file.truncate(frames * self.frame_bytes)
        self._file.seek(0, os.SEEK_END)

    def append(self, latents: torch.Tensor) -> None:
        """Append ``[F, C, H, W]`` latents."""
        data = latents.detach().to("cpu", self.dtype).contiguous()
        self._file.write(data.view(torch.uint8).numpy().tobytes())

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def read(self, start: int, count: int) -> torch.Tensor:
        """Frames ``start .. start+count-1`` as ``[count, C, H, W]``."""
        self._file.flush()
        self._file.seek(start * self.frame_bytes)
        data = bytearray(self._file.read(count * self.frame_bytes))
        self._file.seek(0, os.SEEK_END)
        if len(data) != count * self.frame_bytes:
            raise CLIError(f"{self.path} is shorter than expected", EXIT_FAILURE)
        flat = torch.frombuffer(data, dtype=torch.uint8).view(self.dtype)
        return flat.view(count, *self.frame_shape).clone()

    def close(self) -> None:
        self._file.close()


class _StopRequest:
    """First Ctrl-C / SIGTERM: stop after the current chunk. Second Ctrl-C: KeyboardInterrupt now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        _note(f"{name}: stopping after the current chunk (Ctrl-C again to abort now)")

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            self._previous[signal_number] = signal.signal(signal_number, self._handle)
        try:
            yield self
        finally:
            for number, handler in self._previous.items():
                signal.signal(number, handler)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _default_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp makes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write_text(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _save_latents(log: LatentLog, frames: int, path: Path) -> None:
    from safetensors.torch import save_file

    latents = log.read(0, frames).unsqueeze(0)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({"latents": latents}, temporary, metadata={"format": "memrope.latents"})
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _progress_bar(plan: Plan, video: Video, initial: int, count: int) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    label = video.output.name if count == 1 else f"[{video.index + 1}/{count}] {video.output.name}"
    return tqdm(
        total=plan.chunks,
        initial=initial,
        unit="chunk",
        desc=label,
        disable=not plan.progress,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _progress_postfix(plan: Plan, frames_done: int, started: float, generated: int) -> str:
    elapsed = max(time.perf_counter() - started, 1e-9)
    speed = _seconds_of(generated * plan.cache.chunk_frames) / elapsed
    return (
        f"latent {frames_done}/{plan.num_frames}, frames {_video_frames(frames_done)}/"
        f"{_video_frames(plan.num_frames)}, video {_video_frames(frames_done) / FPS:.1f}/"
        f"{_video_frames(plan.num_frames) / FPS:.1f} s, {speed:.3g} video-s/s"
    )


def _generate_video(plan: Plan, video: Video, model: Any, decoder: Any, stop: _StopRequest, count: int) -> bool:
    """Generate (or resume) one video; returns whether it is complete."""
    from memrope.components import make_pipeline
    from memrope.video import Mp4Writer, to_uint8

    preset = plan.preset
    pipeline = make_pipeline(preset, model, cache=plan.cache, device=plan.device, dtype=plan.dtype)
    chunk = plan.cache.chunk_frames
    frame_shape = (preset.model_config.in_dim, *preset.latent_hw)
    signature = plan.signature(video)
    resuming = video.action == "resume"
    state = None
    start_frame = 0
    if resuming:
        try:
            state = pipeline.load_state(video.state)
        except (OSError, ValueError) as error:
            raise CLIError(f"cannot resume from {video.state}: {error}", EXIT_FAILURE) from None
        start_frame = int(state["meta"]["start_frame"])
    keep_log = plan.save_every is not None or video.latents_path is not None or resuming
    temporary_log = plan.save_every is None and not resuming
    if not temporary_log:
        log_path = video.latents_log
    else:
        log_path = video.output.with_name(f".{video.output.name}.{secrets.token_hex(4)}.latents.tmp")
    if not resuming:
        video.latents_log.unlink(missing_ok=True)
        video.state.unlink(missing_ok=True)
    log = LatentLog(log_path, frame_shape, plan.dtype) if keep_log else None
    if resuming and log is not None:
        if log.frames < start_frame:
            log.close()
            raise CLIError(
                f"cannot resume {video.output}: {log_path} holds {log.frames} latent frames but the "
                f"checkpoint is at frame {start_frame}; delete {video.state} to start over",
                EXIT_FAILURE,
            )
        log.truncate(start_frame)
    if plan.save_every is not None:
        run_info = {"format": RUN_FORMAT, "signature": signature, "latent_frame_shape": list(frame_shape)}
        _atomic_write_text(video.run_file, json.dumps(run_info, indent=2))

    frames_done = start_frame
    generated = 0
    complete = False
    interrupted = False
    started = time.perf_counter()
    generation_seconds = 0.0
    cache_info: dict[str, Any] = {}
    for device in _cuda_devices(plan):
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with Mp4Writer(video.output, fps=FPS) as writer:
            decoder.reset()
            for offset in range(0, start_frame, chunk):  # re-decode the frames of the interrupted run
                latents = log.read(offset, min(chunk, start_frame - offset)).unsqueeze(0)  # type: ignore[union-attr]
                writer.write(to_uint8(decoder.decode_chunk(latents.to(plan.device))[0]))
            if resuming:
                stream = pipeline.stream(resume_from=state)
            else:
                switches = [(entry.frame, embeds) for entry, embeds in zip(video.switches, video.switch_embeds)]
                stream = pipeline.stream(
                    video.embeds, num_frames=plan.num_frames, seed=plan.seed, latent_hw=preset.latent_hw,
                    prompt_switches=switches or None,
                )
            recorder = None
            if plan.attention_stats and pipeline.cache is not None:
                from memrope.diagnostics import AttentionMassRecorder

                recorder = AttentionMassRecorder()
                recorder.attach(pipeline.cache)
            bar = _progress_bar(plan, video, start_frame // chunk, count)
            generation_started = time.perf_counter()
            try:
                for result in stream:
                    latents = result.latents
                    if log is not None:
                        log.append(latents[0])
                    writer.write(to_uint8(decoder.decode_chunk(latents)[0]))
                    frames_done = result.start_frame + latents.shape[1]
                    generated += 1
                    done = frames_done >= plan.num_frames
                    due = plan.save_every is not None and (result.index + 1) % plan.save_every == 0
                    if not done and plan.save_every is not None and (due or stop.requested):
                        log.sync()  # type: ignore[union-attr]
                        pipeline.save_state(video.state)
                    if (generated == 1 or done) and pipeline.cache is not None:
                        cache_info = _cache_info(pipeline.cache)
                    bar.set_postfix_str(_progress_postfix(plan, frames_done, generation_started, generated))
                    bar.update(1)
                    if stop.requested and not done:
                        interrupted = True
                        break
                complete = frames_done >= plan.num_frames
            except KeyboardInterrupt:
                interrupted = True
                raise
            finally:
                generation_seconds = time.perf_counter() - generation_started
                bar.close()
                if recorder is not None and recorder.records:
                    recorder.save(video.attention_stats)
    finally:
        if log is not None:
            if complete and video.latents_path is not None:
                _save_latents(log, frames_done, video.latents_path)
            log.close()
            if complete or temporary_log:
                log.path.unlink(missing_ok=True)
        if complete:
            video.state.unlink(missing_ok=True)
            video.run_file.unlink(missing_ok=True)
        report = _report(
            plan, video, signature, frames_done, start_frame, generated, complete, interrupted,
            time.perf_counter() - started, generation_seconds, cache_info,
        )
        if frames_done > 0:
            _atomic_write_text(video.report, json.dumps(report, indent=2) + "\n")
    if not plan.progress or interrupted:
        status = "complete" if complete else f"stopped at latent frame {frames_done}/{plan.num_frames}"
        _note(f"{video.output}: {status}, {_video_frames(frames_done)} frames")
    return complete


def _cuda_devices(plan: Plan) -> list[torch.device]:
    """The CUDA devices the run uses (DiT, text encoder, VAE)."""
    placement = plan.placement
    used = [*placement.devices, placement.text_encoder_device, placement.vae_device]
    return [device for device in dict.fromkeys(used) if device.type == "cuda"]


def _cache_info(cache: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for name, getter in (
        ("slot_layout", lambda: cache.slot_layout()),
        ("summary", lambda: cache.summary()),
        ("resident_bytes", lambda: int(cache.resident_bytes())),
    ):
        try:
            info[name] = getter()
        except Exception:  # noqa: BLE001 (the report must not fail on an inspection helper)
            info[name] = None
    return info


def _report(
    plan: Plan,
    video: Video,
    signature: dict[str, Any],
    frames_done: int,
    start_frame: int,
    generated: int,
    complete: bool,
    interrupted: bool,
    wall_seconds: float,
    generation_seconds: float,
    cache_info: dict[str, Any],
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": 1,
        "complete": complete,
        "interrupted": interrupted,
        "output": str(video.output),
        "prompt": video.prompt,
        "prompt_schedule": video.schedule,
        "preset": plan.preset.name,
        "checkpoint": plan.checkpoint,
        "seed": plan.seed,
        "device": str(plan.device),
        "placement": plan.placement.to_dict(),
        "rank": plan.rank,
        "world_size": plan.world_size,
        "dtype": _dtype_name(plan.dtype),
        "fps": FPS,
        "width": plan.preset.width,
        "height": plan.preset.height,
        "latent_frames": frames_done,
        "latent_frames_requested": plan.num_frames,
        "video_frames": _video_frames(frames_done),
        "seconds_of_video": _video_frames(frames_done) / FPS,
        "chunk_frames": plan.cache.chunk_frames,
        "chunks": frames_done // plan.cache.chunk_frames,
        "chunks_this_run": generated,
        "resumed_from_latent_frame": start_frame if video.action == "resume" else None,
        "wall_seconds": wall_seconds,
        "generation_seconds": generation_seconds,
        "chunks_per_second": generated / generation_seconds if generation_seconds > 0 else None,
        "cache": {
            "config": plan.cache.to_dict(),
            "slot_layout": cache_info.get("slot_layout"),
            "summary": cache_info.get("summary"),
            "resident_bytes": cache_info.get("resident_bytes"),
        },
        "peak_rss_bytes": _peak_rss_bytes(),
        "cuda_max_memory_allocated_bytes": {
            str(device): torch.cuda.max_memory_allocated(device) for device in _cuda_devices(plan)
        } or None,
        "latents": str(video.latents_path) if complete and video.latents_path is not None else None,
        "attention_stats": str(video.attention_stats) if plan.attention_stats else None,
        "signature": signature,
    }
    return report


def _run_generate(args: argparse.Namespace) -> int:
    if args.list_presets:
        print(presets_table())
        return EXIT_OK
    try:
        env = DistributedEnv.from_environ()
    except ValueError as error:
        raise CLIError(f"bad torchrun environment: {error}") from None
    if not env.is_distributed:
        return _generate_share(args, env)
    with DistributedContext(env, device=_single_device(args, env)) as context:
        try:
            code = _generate_share(args, env)
        except CLIError as error:  # every rank reaches the gather, so no rank waits forever
            _print_error(f"[rank {env.rank}] {error}")
            code = error.exit_code
        codes = context.gather_object(code)
    if codes is not None:
        failed = [rank for rank, rank_code in enumerate(codes) if rank_code != EXIT_OK]
        status = f"ranks {failed} did not finish" if failed else "every rank finished"
        _note(f"{env.world_size} ranks, {status}")
    return code


def _single_device(args: argparse.Namespace, env: DistributedEnv) -> torch.device:
    """``--device``; else ``cuda:LOCAL_RANK`` (``cuda:0`` outside torchrun) with CUDA, else the CPU."""
    if args.device is not None:
        return _device(args.device)
    return torch.device(f"cuda:{env.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _generate_share(args: argparse.Namespace, env: DistributedEnv) -> int:
    """Generate this rank's videos (every video in a single process)."""
    plan = plan_generate(args, env)
    if env.is_distributed:
        indices = [video.index for video in plan.videos]
        _note(f"[rank {env.rank}/{env.world_size}] {len(indices)} video(s): {indices} on {plan.device}")
    todo = [video for video in plan.videos if video.action != "skip"]
    for video in plan.videos:
        if video.action == "skip":
            _note(f"{video.output} is already complete; skipped")
    if not todo:
        return EXIT_OK
    _resolve_weights(plan)
    _encode_prompts(plan, [video for video in todo if video.action == "fresh"])
    decoder = _load_decoder(plan)
    model = _load_model(plan)
    stop = _StopRequest()
    with stop.installed():
        for video in todo:
            complete = _generate_video(plan, video, model, decoder, stop, plan.total_videos)
            if not complete:
                if plan.save_every is not None:
                    _note(f"resume with the same command plus --resume (checkpoint: {video.state})")
                return EXIT_INTERRUPTED
    return EXIT_OK


register_command(Command("generate", "generate videos (mp4 + JSON report)", _configure_generate,
                         _run_generate, GENERATE_DESCRIPTION))
register_command(Command("presets", "list the presets (models, lengths, GPU memory)", _configure_presets,
                         _run_presets))


register_command(Command("plot-attention", diagnostics.PLOT_ATTENTION_HELP,
                         diagnostics.configure_plot_attention, diagnostics.run_plot_attention,
                         diagnostics.PLOT_ATTENTION_DESCRIPTION))


if __name__ == "__main__":
    sys.exit(main())
