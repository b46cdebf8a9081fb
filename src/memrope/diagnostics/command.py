"""``memrope plot-attention STATS.json``: the figure from the command line (registered in memrope.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

from memrope.diagnostics.figure import plot_attention_mass
from memrope.diagnostics.files import load_attention_mass
from memrope.errors import EXIT_FAILURE, EXIT_OK, CLIError

PLOT_ATTENTION_HELP = "plot attention-mass statistics (JSON of AttentionMassRecorder.save) as a PNG"
PLOT_ATTENTION_DESCRIPTION = """Plot where the queries' attention goes: sink, memory, recent, current chunk.

    memrope plot-attention stats.json -o stats.png --title "fox, 60 s"

STATS.json comes from memrope.diagnostics.AttentionMassRecorder.save(). Needs matplotlib
(pip install "memrope[plot]")."""


def configure_plot_attention(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``memrope plot-attention``."""
    parser.add_argument(
        "stats", type=Path, metavar="STATS.json", help="statistics written by AttentionMassRecorder.save"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT.png",
        help="the figure to write (default: STATS with the suffix .png)",
    )
    parser.add_argument("--title", help="figure title (default: policy, chunks and layers)")


def run_plot_attention(args: argparse.Namespace) -> int:
    """``memrope plot-attention``: load, validate, plot; problems become ``CLIError``."""
    stats_path: Path = args.stats
    output: Path = args.output if args.output is not None else stats_path.with_suffix(".png")
    if not stats_path.is_file():
        raise CLIError(
            f"{stats_path} does not exist" if not stats_path.exists() else f"{stats_path} is not a file"
        )
    if output.is_dir():
        raise CLIError(f"--output {output} is a directory; give a file path")
    if not output.parent.is_dir():
        raise CLIError(f"--output {output}: the folder {output.parent} does not exist")
    try:
        data = load_attention_mass(stats_path)
    except ValueError as error:
        raise CLIError(str(error)) from None
    except OSError as error:
        raise CLIError(f"cannot read {stats_path}: {error}") from None
    try:
        written = plot_attention_mass(data, output, title=args.title)
    except ImportError as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    except ValueError as error:
        raise CLIError(f"{stats_path}: {error}") from None
    except OSError as error:
        raise CLIError(f"cannot write {output}: {error}", EXIT_FAILURE) from None
    print(written)
    return EXIT_OK
