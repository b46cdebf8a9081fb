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
* Every video gets a JSON report ``<video>.json`` (what was requested and produced: latent frames,
  video frames, seconds; wall time, chunks/s, cache layout and resident bytes, peak memory).
* Lengths a person types: ``--seconds S`` makes the shortest whole-chunk video at least ``S`` seconds
  long and ``--num-frames N`` rounds up to whole chunks; a note line says what is made.
* ``--save-every N`` checkpoints the run every ``N`` chunks next to the video
  (``<video>.resume.safetensors``: the pipeline state; ``<video>.resume.latents``: the latents so
  far, raw, so the video can be re-decoded exactly; ``<video>.resume.json``: the run's settings and
  fingerprints of the weights and of the latents log). ``--resume`` continues from there (same
  arguments, same weights, an intact log) and gives the same video as an uninterrupted run; without
  a checkpoint it starts from the beginning, and a video whose report says it is complete is
  skipped. A checkpoint is never deleted on a guess: without ``--resume`` the run refuses to start
  until told ``--restart``. The files are removed when a video is complete.
* The first Ctrl-C (or SIGTERM) stops at the end of the current chunk: the video so far is finalised
  into a playable mp4, a checkpoint is written (with ``--save-every``) and the exit status is 130. A
  second Ctrl-C aborts at once; a Ctrl-C before the first chunk (while loading or positioning the
  noise) aborts at once and leaves every output as it was.
* Nothing lost, nothing silently wrong: all outputs of a run must be distinct files; a run holds a
  lock on each of its outputs (``.<video>.lock``); the video is written under a temporary name and
  moved into place only by a finished or interrupted run; a failed run (an error, a full disk, NaN or
  infinity in a chunk) leaves an existing video and its report untouched and exits non-zero; files
  a killed run left behind are removed by the next run of the same output.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import resource
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from memrope import diagnostics
from memrope.config import POLICIES, MemRoPEConfig
from memrope.devices import DevicePlan, NotEnoughMemoryError, plan_devices
from memrope.distributed import DistributedContext, DistributedEnv, shard_indices
from memrope.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CLIError, NonFiniteError
from memrope.noise import check_seed
from memrope.presets import FPS, PRESETS, Preset, presets_table
from memrope.schedule import (
    LATENT_FRAMES_PER_SECOND,
    ScheduledPrompt,
    latent_frames_at_least,
    parse_prompt_schedule,
    round_up_to_chunk,
    video_frame_count,
    video_seconds,
)

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
LOCK_SUFFIX = ".lock"
REPORT_FORMAT = "memrope.generate_report"
PLACEMENTS = ("single", "split", "auto")
RUN_FORMAT = "memrope.generate_run"
#: Longest video one ``memrope generate`` run makes (seconds): the initial noise is positioned before
#: the first frame, which takes longer the longer the video (~90 s for 24 h at 480x832 on one core).
MAX_SECONDS = 24 * 3600
#: ``--save-latents`` copies the latents log into the safetensors file in pieces of this many bytes.
COPY_PIECE_BYTES = 16 * 2**20
#: Checkpoint fingerprints of the latents log kept in the run file (the current and the one before).
KEPT_LOG_FINGERPRINTS = 2


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

Length: N latent frames decode to 4N-3 video frames at 16 fps, made in whole chunks (3 latent
frames). --seconds S makes the shortest whole-chunk video at least S seconds long (--seconds 4 -> 18
latent frames = 69 frames = 4.31 s); --num-frames N rounds up to whole chunks (10 -> 12). A note line
and the report say what is made; at most 24 h of video per run.

Prompt switches: --prompt-schedule "0:a cat sits;120:the cat jumps" makes one video whose prompt
changes at latent frame 120 (or 30s; a start inside a chunk moves to the next chunk boundary): the
cross-attention context is recomputed and the cache window after the sink is re-encoded under the
new prompt, while the sink and the memory tokens keep the past.

Interrupting: the first Ctrl-C stops after the current chunk and leaves a playable mp4 (and a
checkpoint with --save-every); run the same command with --resume to continue. While a checkpoint
exists, a run without --resume refuses to start: pass --resume to continue or --restart to discard
the checkpoint and start over.

Failures (an error, a full disk, NaN/inf) leave an existing video and its report as they were and
exit with status 1.

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


def _seed(text: str) -> int:
    try:
        return check_seed(int(text), "--seed")
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64 - 1], got {text!r}") from None


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
        help="latent frames, rounded up to whole chunks (3); default: the preset's",
    )
    frames.add_argument(
        "--seconds", type=_finite_float, metavar="S",
        help="video length in seconds at 16 fps: the shortest whole-chunk video at least S s long "
        "(4 -> 18 latent frames = 69 frames = 4.31 s)",
    )
    length.add_argument("--seed", type=_seed, default=0, help="noise seed in [0, 2**64 - 1] (default 0)")

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
    restart = output.add_mutually_exclusive_group()
    restart.add_argument(
        "--resume", action="store_true",
        help="continue from the checkpoint next to the output (same arguments); start afresh without one",
    )
    restart.add_argument(
        "--restart", action="store_true",
        help="discard the checkpoint of an interrupted --save-every run of the output and start over "
        "(without --resume or --restart such a checkpoint makes the run refuse to start)",
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
    """Seconds of video that ``latent_frames`` stand for at 4 latent frames per second (speeds)."""
    return latent_frames / LATENT_FRAMES_PER_SECOND


def _video_frames(latent_frames: int) -> int:
    return video_frame_count(latent_frames)


def _made(latent_frames: int) -> str:
    """``'18 latent frames = 69 video frames = 4.31 s'``."""
    return (
        f"{latent_frames} latent frames = {video_frame_count(latent_frames)} video frames = "
        f"{video_seconds(latent_frames):.2f} s"
    )


def _number(value: float) -> str:
    """A number as a person would type it (``1000000000`` rather than ``1e+09``)."""
    return str(int(value)) if value == int(value) and abs(value) < 1e16 else repr(value)


def _resolve_preset(name: str) -> Preset:
    if name in PRESETS:
        return PRESETS[name]
    raise CLIError(f"unknown model/preset {name!r}; valid presets: {', '.join(PRESETS)}")


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


def _read_prompts(args: argparse.Namespace) -> list[str]:
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
    if not prompts:
        raise CLIError("no prompt: give --prompt TEXT (repeatable) or --prompts-file PATH")
    return prompts


def _latent_frames(args: argparse.Namespace, preset: Preset, chunk: int) -> tuple[int, dict[str, Any], str]:
    """Latent frames to make (whole chunks), the length as requested, and how to name the request.

    ``--seconds S``: the shortest whole-chunk video at least ``S`` s long; ``--num-frames N``: ``N``
    rounded up to whole chunks; neither: the preset's length. At most :data:`MAX_SECONDS` of video.
    """
    longest = latent_frames_at_least(MAX_SECONDS, chunk_frames=chunk)
    bound = (
        f"memrope generate makes at most 24 h of video per run (--seconds {MAX_SECONDS} = --num-frames "
        f"{longest}) because the initial noise is positioned before the first frame, which takes longer "
        "the longer the video"
    )
    if args.seconds is not None:
        seconds = args.seconds
        asked = f"--seconds {_number(seconds)}"
        if seconds <= 0:
            raise CLIError(f"{asked}: the length must be > 0 seconds")
        if seconds > MAX_SECONDS:
            raise CLIError(f"{asked} is too long: {bound}")
        return latent_frames_at_least(seconds, chunk_frames=chunk), {"seconds": seconds}, asked
    if args.num_frames is None:
        return preset.latent_frames, {"latent_frames": preset.latent_frames, "preset_default": True}, (
            f"the {preset.name} preset's length"
        )
    asked = f"--num-frames {args.num_frames}"
    if args.num_frames > longest:
        raise CLIError(f"{asked} is too long: {bound}")
    return round_up_to_chunk(args.num_frames, chunk_frames=chunk), {"latent_frames": args.num_frames}, asked


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
    elif device.type == "meta":
        raise CLIError(f"--device {text} holds no data (only shapes), so it cannot generate; use cpu, cuda, cuda:N or mps")
    elif device.type != "cpu":
        try:
            torch.zeros(1, device=device).add_(1).cpu()
        except Exception:  # noqa: BLE001 (any failure means the device is unusable)
            raise CLIError(f"--device {text}: this device is not available here; use cpu, cuda, cuda:N or mps") from None
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


def _check_resume_file(video: Video, plan: Plan) -> str:
    """What to do with ``video`` under ``--resume``: ``"resume"``, ``"skip"`` or ``"fresh"``."""
    signature = plan.signature(video)
    if video.state.exists():
        try:
            saved = json.loads(video.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CLIError(
                f"cannot resume {video.output}: {video.run_file} is missing or unreadable; "
                "pass --restart instead of --resume to start over"
            ) from None
        if not isinstance(saved, dict) or saved.get("format") != RUN_FORMAT or not isinstance(
            saved.get("signature"), dict
        ):
            raise CLIError(
                f"cannot resume {video.output}: {video.run_file} is not a memrope run file; "
                "pass --restart instead of --resume to start over"
            )
        differences = [
            f"{name}: checkpoint {saved['signature'].get(name)!r}, now {value!r}"
            for name, value in signature.items()
            if saved["signature"].get(name) != value
        ]
        if differences:
            raise CLIError(
                f"cannot resume {video.output}: the checkpoint {video.state} was written with other "
                f"settings ({'; '.join(differences)}); rerun with the same arguments or pass --restart "
                "instead of --resume to start over"
            )
        if not video.latents_log.is_file():
            raise CLIError(
                f"cannot resume {video.output}: its latents log {video.latents_log} is missing, so the "
                "frames made so far cannot be decoded again; pass --restart instead of --resume to start over"
            )
        video.run_info = saved
        return "resume"
    if video.output.exists() and video.report.exists():
        try:
            report = json.loads(video.report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "fresh"
        if isinstance(report, dict) and report.get("complete") and report.get("signature") == signature:
            return "skip"
    return "fresh"


def _checkpoint_frames(video: Video) -> str:
    """``' at latent frame N of M'`` from the checkpoint's metadata (its header only), else ``''``."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(video.state), framework="pt") as handle:
            metadata = handle.metadata() or {}
        for text in metadata.values():
            meta = json.loads(text)
            if isinstance(meta, dict) and "start_frame" in meta and "num_frames" in meta:
                return f" at latent frame {int(meta['start_frame'])} of {int(meta['num_frames'])}"
    except Exception:  # noqa: BLE001,S110 (only a detail of the message; the refusal stands anyway)
        pass
    return ""


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


def plan_generate(args: argparse.Namespace, env: DistributedEnv | None = None) -> Plan:
    """Validate a ``memrope generate`` invocation; raises :class:`CLIError`. Writes nothing.

    Under ``torchrun`` (``env`` with several ranks) the plan holds this rank's share of the videos.
    What each video does (start, resume, skip) is decided later, under its lock
    (:func:`_prepare_videos`).
    """
    env = DistributedEnv() if env is None else env
    preset = _resolve_preset(args.model)
    cache = _cache_config(args, preset)
    chunk = cache.chunk_frames
    num_frames, requested, asked = _latent_frames(args, preset, chunk)
    if not cache.bounded and num_frames > cache.max_positions:
        longest = cache.max_positions // chunk * chunk
        raise CLIError(
            f"--policy full keeps every frame and supports at most {cache.max_positions} latent frames "
            f"(the RoPE table); {asked} needs {num_frames}. The longest in whole chunks is --num-frames "
            f"{longest} ({_made(longest)}); use --policy memrope for longer videos"
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
    videos = [video for index, video in enumerate(videos) if index in shard_indices(len(videos), env.rank, env.world_size)]
    for video in videos:
        _check_writable(video.output, "--output")
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
            _note(f"note: --prompt-schedule starts moved to the next chunk boundary (latent frames): {', '.join(moved)}")
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
    )


# --------------------------------------------------------------------------------------------------
# memrope generate: owning the outputs (locks, files left behind, checkpoints)
# --------------------------------------------------------------------------------------------------


class OutputLock:
    """Exclusive ownership of one video's outputs: ``fcntl.flock`` on ``.<video>.lock`` holding the pid.

    The kernel drops the lock when its process dies, so a lock file left by a killed run is simply
    taken over. The file is removed on :meth:`release`; an acquirer that locked a file removed in the
    meantime notices (the inode changed) and tries again.
    """

    def __init__(self, path: Path, output: Path) -> None:
        self.path = path
        self.output = output
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`CLIError` naming the pid of the run that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise CLIError(f"cannot create the lock file {self.path}: {error.strerror}", EXIT_FAILURE) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CLIError(
                    f"{self.output} is being written by another memrope run (pid {owner}, lock {self.path}); "
                    "wait for it to finish or choose another --output",
                    EXIT_FAILURE,
                ) from None
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                break
            os.close(fd)  # released and removed between open and flock: lock the new file
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: see acquire()
        os.close(self._fd)
        self._fd = None


@contextmanager
def _locked(videos: list[Video]) -> Iterator[None]:
    """Hold the lock of every video (all or none) for the block."""
    with ExitStack() as stack:
        for video in videos:
            lock = OutputLock(video.lock, video.output)
            lock.acquire()
            stack.callback(lock.release)
        yield


def _leftovers(video: Video) -> list[Path]:
    """Temporary files of earlier runs of ``video`` (killed, so never removed); only ours match."""
    from memrope.video import Mp4Writer

    found = Mp4Writer.partial_files(video.output)
    targets = [video.output, video.report, video.state, video.run_file, video.attention_stats]
    if video.latents_path is not None:
        targets.append(video.latents_path)
    patterns = [(target, re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")) for target in targets]
    patterns.append((video.output, re.compile(rf"\.{re.escape(video.output.name)}\.[0-9a-f]{{8}}\.latents\.tmp")))
    for target, pattern in patterns:
        try:
            names = os.listdir(target.parent)
        except OSError:
            continue
        found.extend(target.with_name(name) for name in names if pattern.fullmatch(name))
    return sorted(set(found))


def _prepare_videos(plan: Plan) -> None:
    """Under the locks: remove what killed runs left, and decide what each video does.

    A checkpoint is kept unless ``--restart`` says otherwise: without ``--resume`` its existence
    stops the run (forgetting ``--resume`` must not wipe hours of progress).
    """
    for video in plan.videos:
        leftovers = _leftovers(video)
        if not video.state.exists():  # a log or run file without a checkpoint cannot be resumed
            leftovers += [path for path in (video.latents_log, video.run_file) if path.exists()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            _note(f"removed {len(leftovers)} file(s) an interrupted run left: {', '.join(p.name for p in leftovers)}")
        if plan.restart:
            removed = [path for path in (video.state, video.latents_log, video.run_file) if path.exists()]
            for path in removed:
                path.unlink()
            if removed:
                _note(f"--restart: removed the checkpoint of {video.output} ({', '.join(p.name for p in removed)})")
        elif plan.resume:
            video.action = _check_resume_file(video, plan)
        elif video.state.exists():
            raise CLIError(
                f"{video.output} has the checkpoint {video.state} of an interrupted run"
                f"{_checkpoint_frames(video)}; add --resume to continue it, or --restart to discard it "
                "and start over"
            )


# --------------------------------------------------------------------------------------------------
# memrope generate: loading
# --------------------------------------------------------------------------------------------------


def _resolve_weights(plan: Plan) -> None:
    """Find (or download) the checkpoint before anything else, so a missing file fails fast.

    Fills ``plan.weight_files`` with the local weight files (for the resume fingerprint).
    """
    if plan.checkpoint is None:
        return
    from memrope.loading import CHECKPOINTS, resolve_checkpoint

    try:
        files = [("checkpoint", resolve_checkpoint(plan.checkpoint))]
        entry = CHECKPOINTS.get(plan.checkpoint) if not Path(plan.checkpoint).exists() else None
        if plan.lora is not None:
            files.append(("lora", resolve_checkpoint(plan.lora)))
        elif entry is not None and entry.lora is not None:
            files.append(("lora", resolve_checkpoint(entry.lora.uri)))
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(f"checkpoint not available: {error}", EXIT_FAILURE) from None
    plan.weight_files = files


#: A weight file's fingerprint hashes it whole up to this size, else this many evenly spaced pieces.
FINGERPRINT_PIECES = 16
FINGERPRINT_PIECE_BYTES = 2**20


def _file_fingerprint(path: Path) -> dict[str, Any]:
    """``{"size", "blake2b"}`` of a file: the hash covers the whole file when it is at most 16 MiB,
    else 16 evenly spaced 1 MiB pieces (the first and the last included), so a multi-GB checkpoint
    costs milliseconds; any change of size, or of contents in those pieces, shows."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as file:
        if size <= FINGERPRINT_PIECES * FINGERPRINT_PIECE_BYTES:
            for piece in iter(lambda: file.read(COPY_PIECE_BYTES), b""):
                digest.update(piece)
        else:
            last = size - FINGERPRINT_PIECE_BYTES
            for index in range(FINGERPRINT_PIECES):
                file.seek(last * index // (FINGERPRINT_PIECES - 1))
                digest.update(file.read(FINGERPRINT_PIECE_BYTES))
    return {"size": size, "blake2b": digest.hexdigest()}


def _weights_fingerprint(plan: Plan) -> list[dict[str, Any]]:
    """Fingerprints of the weight files (``[]`` for the tiny model's built-in seeded weights)."""
    entries = []
    for role, path in plan.weight_files:
        files = [path] if path.is_file() else sorted(file for file in path.rglob("*") if file.is_file())
        for file in files:
            name = file.name if file == path else str(file.relative_to(path))
            entries.append({"role": role, "path": str(path), "file": name, **_file_fingerprint(file)})
    return entries


def _check_weights(video: Video, weights: list[dict[str, Any]]) -> None:
    """Refuse to resume ``video`` with weights other than those its checkpoint was made with."""
    saved = (video.run_info or {}).get("weights")
    if saved is None:
        _note(f"{video.run_file} records no weights fingerprint (an older memrope); the weights are not checked")
        return
    if saved == weights:
        return
    before = {(entry.get("role"), entry.get("file")): entry for entry in saved if isinstance(entry, dict)}
    now = {(entry["role"], entry["file"]): entry for entry in weights}
    differences = []
    for key in sorted(before.keys() | now.keys(), key=str):
        old, new = before.get(key), now.get(key)
        label = f"{key[0]} {key[1]}"
        if old is None or new is None:
            differences.append(f"{label}: {'new' if old is None else 'gone'}")
        elif old.get("size") != new["size"]:
            differences.append(f"{label}: {old.get('size')} bytes then, {new['size']} now")
        elif old.get("blake2b") != new["blake2b"]:
            differences.append(f"{label}: same size, other contents")
    raise CLIError(
        f"cannot resume {video.output}: the weights differ from those the checkpoint {video.state} was "
        f"made with ({'; '.join(differences) or 'other files'}); resume with the original weights or "
        "pass --restart instead of --resume to start over",
        EXIT_FAILURE,
    )


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
    try:
        embeds = encoder.encode([prompt]).float().cpu()
    except NonFiniteError as error:
        raise CLIError(f"the text embeddings of the prompt {prompt!r}: {error}", EXIT_FAILURE) from None
    if embeds.ndim != 3 or embeds.shape[1] > config.text_len or embeds.shape[2] != config.text_dim:
        raise CLIError(
            f"the text encoder gives {list(embeds.shape)} embeddings but the model needs "
            f"[1, <= {config.text_len}, {config.text_dim}]",
            EXIT_FAILURE,
        )
    if not bool(torch.isfinite(embeds).all()):
        raise CLIError(
            f"the text embeddings of the prompt {prompt!r} hold NaN or infinity: the text encoder is "
            "broken (check its weights, or --text-encoder)",
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
    except (FileNotFoundError, ValueError, NonFiniteError) as error:  # CheckpointKeyError/FormatError: ValueErrors
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

#: safetensors names of the dtypes latents are kept in.
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


class LatentLog:
    """Append-only raw latents of one video (one latent frame = ``C*H*W`` elements of ``dtype``).

    A running blake2b of what was appended lets a checkpoint record what the log held (:meth:`hexdigest`)
    at constant cost per chunk; :meth:`rewind_digest` recomputes it for the first frames at resume.

    Args:
        path: the log file.
        frame_shape: ``(C, H, W)``.
        dtype: dtype of the stored latents.
        fresh: start an empty log (truncating any file there); else continue the existing file.

    Raises:
        FileNotFoundError: ``fresh`` is false and the file does not exist.
    """

    def __init__(self, path: Path, frame_shape: tuple[int, ...], dtype: torch.dtype, *, fresh: bool = True) -> None:
        self.path = path
        self.frame_shape = frame_shape
        self.dtype = dtype
        self.frame_bytes = math.prod(frame_shape) * torch.empty(0, dtype=dtype).element_size()
        self._file: BinaryIO = open(path, "w+b" if fresh else "r+b")  # noqa: SIM115 (closed in close())
        self._file.seek(0, os.SEEK_END)
        self._hash = hashlib.blake2b(digest_size=32)

    @property
    def frames(self) -> int:
        return os.fstat(self._file.fileno()).st_size // self.frame_bytes

    def rewind_digest(self, frames: int) -> str:
        """blake2b of the first ``frames`` frames (read in pieces); the running hash continues from there."""
        digest = hashlib.blake2b(digest_size=32)
        self._file.seek(0)
        remaining = frames * self.frame_bytes
        while remaining:
            piece = self._file.read(min(remaining, COPY_PIECE_BYTES))
            if not piece:
                break
            digest.update(piece)
            remaining -= len(piece)
        self._file.seek(0, os.SEEK_END)
        self._hash = digest.copy()
        return digest.hexdigest()

    def hexdigest(self) -> str:
        """blake2b of everything appended since the start (or since :meth:`rewind_digest`)."""
        return self._hash.hexdigest()

    def truncate(self, frames: int) -> None:
        self._file.truncate(frames * self.frame_bytes)
        self._file.seek(0, os.SEEK_END)

    def append(self, latents: torch.Tensor) -> None:
        """Append ``[F, C, H, W]`` latents."""
        data = latents.detach().to("cpu", self.dtype).contiguous().view(torch.uint8).numpy().tobytes()
        self._file.write(data)
        self._hash.update(data)

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
            raise CLIError(f"the latents log {self.path} is shorter than expected", EXIT_FAILURE)
        flat = torch.frombuffer(data, dtype=torch.uint8).view(self.dtype)
        return flat.view(count, *self.frame_shape).clone()

    def copy_to(self, file: BinaryIO, frames: int, piece_bytes: int = COPY_PIECE_BYTES) -> None:
        """Write the raw bytes of the first ``frames`` frames to ``file``, ``piece_bytes`` at a time."""
        self._file.flush()
        self._file.seek(0)
        remaining = frames * self.frame_bytes
        while remaining:
            piece = self._file.read(min(remaining, piece_bytes))
            if not piece:
                raise CLIError(f"the latents log {self.path} is shorter than expected", EXIT_FAILURE)
            file.write(piece)
            remaining -= len(piece)
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        self._file.close()


class _StopRequest:
    """First Ctrl-C / SIGTERM: stop after the current chunk. Second Ctrl-C: KeyboardInterrupt now.

    While :attr:`immediate` is set (before a video's first chunk: nothing to keep yet) the first one
    raises ``KeyboardInterrupt`` at once, so a long start-up (positioning the noise) stops promptly.
    """

    def __init__(self) -> None:
        self.requested = False
        self.immediate = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.immediate or (self.requested and signum == signal.SIGINT):
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


def _save_latents(log: LatentLog, frames: int, path: Path, piece_bytes: int = COPY_PIECE_BYTES) -> None:
    """Write the first ``frames`` frames of ``log`` to ``path`` as safetensors ``{"latents": [1, F, C, H, W]}``.

    The file is assembled by hand (header, then the log's raw bytes copied ``piece_bytes`` at a time),
    so memory stays bounded whatever the length; the log holds exactly the little-endian, C-order bytes
    safetensors stores. Written under a temporary name and moved into place.
    """
    nbytes = frames * log.frame_bytes
    header = {
        "__metadata__": {"format": "memrope.latents"},
        "latents": {
            "dtype": SAFETENSORS_DTYPES[log.dtype],
            "shape": [1, frames, *log.frame_shape],
            "data_offsets": [0, nbytes],
        },
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(len(encoded).to_bytes(8, "little"))
            file.write(encoded)
            log.copy_to(file, frames, piece_bytes)
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


def _check_finite(latents: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` when ``latents`` hold NaN or infinity (one host sync per chunk)."""
    if not bool(torch.isfinite(latents).all()):
        raise NonFiniteError(f"{what} holds NaN or infinity")


def _run_info(signature: dict[str, Any], frame_shape: tuple[int, ...], weights: list[dict[str, Any]],
              log: LatentLog, start: dict[str, Any] | None) -> dict[str, Any]:
    """The run file: settings, weights fingerprint, and the latents log's fingerprint at each checkpoint."""
    return {
        "format": RUN_FORMAT,
        "signature": signature,
        "latent_frame_shape": list(frame_shape),
        "weights": weights,
        "latents": {"frame_bytes": log.frame_bytes, "checkpoints": [start] if start is not None else []},
    }


def _save_checkpoint(pipeline: Any, video: Video, log: LatentLog, run_info: dict[str, Any], frames: int) -> None:
    """Checkpoint at ``frames``: the log on disk, its fingerprint in the run file, then the pipeline state.

    The run file keeps the fingerprints of this and the previous checkpoint, written before the state,
    so whichever state a kill leaves, its fingerprint is there.
    """
    log.sync()
    records: list[dict[str, Any]] = run_info["latents"]["checkpoints"]
    records[:] = [*records[-(KEPT_LOG_FINGERPRINTS - 1):], {"frames": frames, "blake2b": log.hexdigest()}]
    _atomic_write_text(video.run_file, json.dumps(run_info, indent=2))
    pipeline.save_state(video.state)


def _rewind_log(video: Video, log: LatentLog, start_frame: int) -> dict[str, Any] | None:
    """Check the latents log of a resumed video against its checkpoint, then cut it at ``start_frame``.

    Returns the fingerprint record of ``start_frame`` (``None`` for a run file of an older memrope).
    Raises :class:`CLIError` (nothing changed) for a truncated, replaced or modified log.
    """
    again = "pass --restart instead of --resume to start over"
    if log.frames < start_frame:
        raise CLIError(
            f"cannot resume {video.output}: the latents log {log.path} holds {log.frames} latent frames but "
            f"the checkpoint is at latent frame {start_frame} (the log was truncated or replaced); {again}",
            EXIT_FAILURE,
        )
    latents_info = (video.run_info or {}).get("latents")
    digest = log.rewind_digest(start_frame)
    if not isinstance(latents_info, dict):
        _note(f"{video.run_file} records no latents fingerprint (an older memrope); the log is not checked")
        log.truncate(start_frame)
        return None
    records = latents_info.get("checkpoints") or []
    expected = next((r.get("blake2b") for r in records if isinstance(r, dict) and r.get("frames") == start_frame), None)
    if expected is None:
        raise CLIError(
            f"cannot resume {video.output}: {video.run_file} has no fingerprint of the latents log for the "
            f"checkpoint at latent frame {start_frame} (the checkpoint or the run file was replaced); {again}",
            EXIT_FAILURE,
        )
    if digest != expected or latents_info.get("frame_bytes") != log.frame_bytes:
        raise CLIError(
            f"cannot resume {video.output}: the latents log {log.path} is not what the checkpoint recorded "
            f"(the blake2b of its first {start_frame} latent frames differs: it was modified or "
            f"overwritten); {again}",
            EXIT_FAILURE,
        )
    log.truncate(start_frame)
    return {"frames": start_frame, "blake2b": digest}


def _generate_video(
    plan: Plan,
    video: Video,
    model: Any,
    decoder: Any,
    stop: _StopRequest,
    count: int,
    weights: list[dict[str, Any]],
) -> bool:
    """Generate (or resume) one video; returns whether it is complete.

    On failure (any exception but ``KeyboardInterrupt``) the existing video, its report and the other
    outputs are left as they were and the temporary files removed; a report saying
    ``"complete": false`` and why is written only where no video exists yet (and only once
    generating began: a refused resume writes nothing). NaN/inf in a chunk
    (:class:`NonFiniteError`) and write failures become a one-line :class:`CLIError`.
    """
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
            start_frame = int(state["meta"]["start_frame"])
        except Exception as error:  # noqa: BLE001 (a damaged file raises anything: OSError, SafetensorError, ...)
            raise CLIError(
                f"cannot resume {video.output}: the checkpoint {video.state} is unreadable "
                f"({type(error).__name__}: {error}); pass --restart instead of --resume to start over",
                EXIT_FAILURE,
            ) from None
    keep_log = plan.save_every is not None or video.latents_path is not None or resuming
    temporary_log = plan.save_every is None and not resuming
    log = None
    if keep_log:
        log_path = video.latents_log
        if temporary_log:
            log_path = video.output.with_name(f".{video.output.name}.{secrets.token_hex(4)}.latents.tmp")
        try:
            log = LatentLog(log_path, frame_shape, plan.dtype, fresh=not resuming)
        except FileNotFoundError:
            raise CLIError(
                f"cannot resume {video.output}: its latents log {log_path} is missing; pass --restart "
                "instead of --resume to start over",
                EXIT_FAILURE,
            ) from None

    frames_done = start_frame
    generated = 0
    complete = False
    interrupted = False
    failure: str | None = None  # why a run that began generating failed
    began = False
    started = time.perf_counter()
    generation_seconds = 0.0
    cache_info: dict[str, Any] = {}
    recorder = None
    bar = None
    writer = Mp4Writer(video.output, fps=FPS)
    for device in _cuda_devices(plan):
        torch.cuda.reset_peak_memory_stats(device)
    stop.immediate = True  # nothing made yet: a Ctrl-C aborts at once and leaves every output as it was
    try:
        start_record = _rewind_log(video, log, start_frame) if resuming and log is not None else None
        run_info = _run_info(signature, frame_shape, weights, log, start_record) if log is not None else {}
        if plan.save_every is not None:
            _atomic_write_text(video.run_file, json.dumps(run_info, indent=2))
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
        stop.immediate = False
        began = True
        if plan.attention_stats and pipeline.cache is not None:
            from memrope.diagnostics import AttentionMassRecorder

            recorder = AttentionMassRecorder()
            recorder.attach(pipeline.cache)
        bar = _progress_bar(plan, video, start_frame // chunk, count)
        generation_started = time.perf_counter()
        try:
            for result in stream:
                latents = result.latents
                last = result.start_frame + latents.shape[1] - 1
                _check_finite(latents, f"chunk {result.index} (latent frames {result.start_frame}-{last})")
                if log is not None:
                    log.append(latents[0])
                writer.write(to_uint8(decoder.decode_chunk(latents)[0]))
                frames_done = result.start_frame + latents.shape[1]
                generated += 1
                done = frames_done >= plan.num_frames
                due = plan.save_every is not None and (result.index + 1) % plan.save_every == 0
                if not done and plan.save_every is not None and (due or stop.requested):
                    _save_checkpoint(pipeline, video, log, run_info, frames_done)  # type: ignore[arg-type]
                if (generated == 1 or done) and pipeline.cache is not None:
                    cache_info = _cache_info(pipeline.cache)
                bar.set_postfix_str(_progress_postfix(plan, frames_done, generation_started, generated))
                bar.update(1)
                if stop.requested and not done:
                    interrupted = True
                    break
        finally:
            generation_seconds = time.perf_counter() - generation_started
        if frames_done >= plan.num_frames and log is not None and video.latents_path is not None:
            _save_latents(log, frames_done, video.latents_path)  # before the video: a failure keeps the old one
        writer.close()  # the video (complete, or what a first Ctrl-C left) replaces the old one
        complete = frames_done >= plan.num_frames
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first chunk
        interrupted = True
        if generated:
            writer.close()  # keep what was made, playable
        else:
            writer.abort()
        raise
    except BaseException as error:
        writer.abort()
        if began:
            failure = str(error) if isinstance(error, CLIError) else f"{type(error).__name__}: {error}"
        if isinstance(error, NonFiniteError):
            raise CLIError(
                f"{video.output}: {error}; stopped, nothing written over the existing video or report "
                "(check the weights, LoRA, text encoder and cache settings)",
                EXIT_FAILURE,
            ) from None
        if isinstance(error, OSError):
            raise CLIError(
                f"{video.output}: {error}; the existing video and report are unchanged", EXIT_FAILURE
            ) from None
        raise
    finally:
        stop.immediate = False
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
            if complete or temporary_log:
                log.path.unlink(missing_ok=True)
        if complete:
            video.state.unlink(missing_ok=True)
            video.run_file.unlink(missing_ok=True)
        if writer.committed or (failure is not None and not video.output.exists()):
            if writer.committed and recorder is not None and recorder.records:
                recorder.save(video.attention_stats)
            report = _report(
                plan, video, signature, frames_done, start_frame, generated, complete, interrupted,
                time.perf_counter() - started, generation_seconds, cache_info, failure,
            )
            _write_report(video, report, quiet=failure is not None)
    if not plan.progress or interrupted:
        status = "complete" if complete else f"stopped at latent frame {frames_done}/{plan.num_frames}"
        _note(f"{video.output}: {status}, {_video_frames(frames_done)} frames")
    return complete


def _write_report(video: Video, report: dict[str, Any], *, quiet: bool) -> None:
    """Write the report; with ``quiet`` (a failure is on its way already) a write error is only noted."""
    try:
        _atomic_write_text(video.report, json.dumps(report, indent=2) + "\n")
    except OSError as error:
        if not quiet:
            raise
        _note(f"could not write the report {video.report}: {error}")


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
    error: str | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": 1,
        "complete": complete,
        "interrupted": interrupted,
        "error": error,
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
        "requested": plan.requested,
        "produced": {
            "latent_frames": frames_done,
            "video_frames": video_frame_count(frames_done),
            "seconds": video_seconds(frames_done),
        },
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
    """Generate this rank's videos (every video in a single process), holding their locks."""
    plan = plan_generate(args, env)
    if env.is_distributed:
        indices = [video.index for video in plan.videos]
        _note(f"[rank {env.rank}/{env.world_size}] {len(indices)} video(s): {indices} on {plan.device}")
    with _locked(plan.videos):
        _prepare_videos(plan)
        todo = [video for video in plan.videos if video.action != "skip"]
        for video in plan.videos:
            if video.action == "skip":
                _note(f"{video.output} is already complete; skipped")
        if not todo:
            return EXIT_OK
        _resolve_weights(plan)
        resumed = [video for video in todo if video.action == "resume"]
        weights = _weights_fingerprint(plan) if plan.save_every is not None or resumed else []
        for video in resumed:
            _check_weights(video, weights)
        _encode_prompts(plan, [video for video in todo if video.action == "fresh"])
        decoder = _load_decoder(plan)
        model = _load_model(plan)
        stop = _StopRequest()
        with stop.installed():
            for video in todo:
                complete = _generate_video(plan, video, model, decoder, stop, plan.total_videos, weights)
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
