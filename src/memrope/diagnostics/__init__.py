"""Opt-in attention diagnostics: how much attention mass each part of the cache receives.

Identity drift shows in where the current chunk's queries look: the sink, the policy's memory slots
(``memrope``: the long and short EMA memory tokens), the recent frames or the chunk itself (the roles
of :meth:`~memrope.cache.MemRoPECache.slot_roles`; :attr:`~memrope.cache.MemRoPECache.role_names`
lists a cache's roles, so a third-party policy's memory slots are roles of their own).
:class:`AttentionMassRecorder` is an attention hook that measures this on every attention call,
:func:`plot_attention_mass` draws it and
``memrope plot-attention STATS.json`` does the same from the command line::

    recorder = AttentionMassRecorder()
    with recorder.attached(cache):
        ...  # generate as usual
    recorder.save("stats.json")
    plot_attention_mass("stats.json", "stats.png")

A *share* is the softmax probability mass (scale ``1/sqrt(D)``, no mask, float32) the queries put
on one role's slots, averaged over queries and heads; the shares of a call sum to 1.

The recorder's memory is bounded: it keeps running sums per cache, layer and chunk (48 bytes per
layer and chunk: about 7 MB for an hour-long video of a 30-layer model) and only the most recent

The modules: :mod:`~memrope.diagnostics.measure` (the shares of one call),
:mod:`~memrope.diagnostics.recorder` (the hook), :mod:`~memrope.diagnostics.sums` (running sums and
per-chunk means), :mod:`~memrope.diagnostics.files` (the JSON format), :mod:`~memrope.diagnostics.figure`
(the PNG) and :mod:`~memrope.diagnostics.command` (``memrope plot-attention``); every public name of
theirs is importable from ``memrope.diagnostics``, the names of ``__all__`` being its documented API.
"""

from __future__ import annotations

from memrope.diagnostics.command import PLOT_ATTENTION_DESCRIPTION as PLOT_ATTENTION_DESCRIPTION
from memrope.diagnostics.command import PLOT_ATTENTION_HELP as PLOT_ATTENTION_HELP
from memrope.diagnostics.command import configure_plot_attention as configure_plot_attention
from memrope.diagnostics.command import run_plot_attention as run_plot_attention
from memrope.diagnostics.figure import EXTRA_ROLE_COLORS as EXTRA_ROLE_COLORS
from memrope.diagnostics.figure import FIGURE_DPI as FIGURE_DPI
from memrope.diagnostics.figure import FIGURE_SIZE as FIGURE_SIZE
from memrope.diagnostics.figure import PLOT_INSTALL_HINT as PLOT_INSTALL_HINT
from memrope.diagnostics.figure import ROLE_COLORS as ROLE_COLORS
from memrope.diagnostics.figure import plot_attention_mass
from memrope.diagnostics.files import (
    ATTENTION_MASS_FORMAT,
    ATTENTION_MASS_VERSION,
    check_attention_mass,
    load_attention_mass,
    statistics_roles,
)
from memrope.diagnostics.files import READABLE_VERSIONS as READABLE_VERSIONS
from memrope.diagnostics.files import REQUIRED_RECORD_FIELDS as REQUIRED_RECORD_FIELDS
from memrope.diagnostics.measure import DEFAULT_QUERY_BLOCK_SIZE as DEFAULT_QUERY_BLOCK_SIZE
from memrope.diagnostics.measure import merge_roles, role_attention_shares, slot_attention_mass
from memrope.diagnostics.recorder import CALL_SELECTIONS as CALL_SELECTIONS
from memrope.diagnostics.recorder import DEFAULT_MAX_RECORDS as DEFAULT_MAX_RECORDS
from memrope.diagnostics.recorder import AttentionMassRecorder
from memrope.diagnostics.recorder import CallSelection as CallSelection
from memrope.diagnostics.sums import mean_shares_per_chunk

__all__ = [
    "ATTENTION_MASS_FORMAT",
    "ATTENTION_MASS_VERSION",
    "AttentionMassRecorder",
    "check_attention_mass",
    "load_attention_mass",
    "mean_shares_per_chunk",
    "merge_roles",
    "plot_attention_mass",
    "role_attention_shares",
    "slot_attention_mass",
    "statistics_roles",
]
