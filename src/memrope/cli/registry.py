"""The table of ``memrope`` subcommands: :class:`Command` and :func:`register_command`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "register_command"]


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
