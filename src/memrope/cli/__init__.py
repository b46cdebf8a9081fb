"""Command line: ``memrope generate`` (text -> mp4 with a fixed-size MemRoPE cache) and ``memrope presets``.

Subcommands are registered in :data:`COMMANDS` (name, help, ``configure(parser)``, ``run(args) ->
exit code``); :func:`register_command` adds one (e.g. ``plot-attention``). One module per command
(:mod:`.generate`, :mod:`.presets`, :mod:`.plot_attention`); ``memrope --version`` prints the version.

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
import sys
from collections.abc import Sequence

from memrope import __version__
from memrope.cli import convert as convert
from memrope.cli import generate as generate
from memrope.cli import plot_attention as plot_attention
from memrope.cli import presets as presets
from memrope.cli.console import _print_error
from memrope.cli.generate_plan import Plan, Video, plan_generate
from memrope.cli.latent_log import LatentLog
from memrope.cli.outputs import OutputLock
from memrope.cli.registry import COMMANDS, Command, register_command
from memrope.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CLIError

__all__ = [
    "COMMANDS",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "Command",
    "LatentLog",
    "OutputLock",
    "Plan",
    "Video",
    "build_parser",
    "main",
    "plan_generate",
    "register_command",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``memrope`` parser with a subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="memrope",
        description="Unbounded-length text-to-video with a fixed-size MemRoPE KV cache.",
    )
    parser.add_argument("--version", action="version", version=f"memrope {__version__}")
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
