"""``memrope plot-attention``: the command of :mod:`memrope.diagnostics.command`, registered here."""

from __future__ import annotations

from memrope.cli.registry import Command, register_command
from memrope.diagnostics.command import (
    PLOT_ATTENTION_DESCRIPTION,
    PLOT_ATTENTION_HELP,
    configure_plot_attention,
    run_plot_attention,
)

__all__ = ["PLOT_ATTENTION_COMMAND"]

PLOT_ATTENTION_COMMAND = register_command(
    Command(
        "plot-attention",
        PLOT_ATTENTION_HELP,
        configure_plot_attention,
        run_plot_attention,
        PLOT_ATTENTION_DESCRIPTION,
    )
)
