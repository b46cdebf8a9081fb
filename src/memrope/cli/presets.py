"""``memrope presets``: the table of presets and their memory plan (or ``--json``; ``--markdown`` for the
memory plan as a README table)."""

from __future__ import annotations

import argparse
import json

from memrope.cli.registry import Command, register_command
from memrope.errors import EXIT_OK
from memrope.memory_plan import memory_table, preset_memory_summary
from memrope.presets import PRESETS, presets_table

__all__ = ["PRESETS_COMMAND"]


def _configure_presets(parser: argparse.ArgumentParser) -> None:
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help="print the presets as JSON, each with its memory plan (every option and the smallest GPU)",
    )
    output.add_argument("--markdown", action="store_true", help="print the memory plan as a markdown table")
    parser.add_argument(
        "--all", action="store_true", help="one row per preset (with latent and video frames), not per family"
    )


def _run_presets(args: argparse.Namespace) -> int:
    if args.json:
        described = [
            {**preset.to_dict(), "memory_plan": preset_memory_summary(preset)} for preset in PRESETS.values()
        ]
        print(json.dumps(described, indent=2))
    elif args.markdown:
        print(memory_table(PRESETS, markdown=True))
    else:
        print(presets_table(every_preset=args.all))  # the presets, then their memory plan
    return EXIT_OK


PRESETS_COMMAND = register_command(
    Command("presets", "list the presets (models, lengths, GPU memory)", _configure_presets, _run_presets)
)
