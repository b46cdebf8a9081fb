"""``memrope presets``: the table of presets (or ``--json``)."""

from __future__ import annotations

import argparse
import json

from memrope.cli.registry import Command, register_command
from memrope.errors import EXIT_OK
from memrope.presets import PRESETS, presets_table

__all__ = ["PRESETS_COMMAND"]


def _configure_presets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the presets as JSON")


def _run_presets(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([preset.to_dict() for preset in PRESETS.values()], indent=2))
    else:
        print(presets_table())
    return EXIT_OK


PRESETS_COMMAND = register_command(
    Command("presets", "list the presets (models, lengths, GPU memory)", _configure_presets, _run_presets)
)
