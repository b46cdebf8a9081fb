"""The figure: attention shares per chunk (stacked) and per layer and chunk (one heatmap per role)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memrope.diagnostics.files import check_attention_mass, load_attention_mass, statistics_roles
from memrope.diagnostics.sums import _cell_totals, _means_from_records, _per_chunk_from_means

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

PLOT_INSTALL_HINT = 'pip install "memrope[plot]"'
ROLE_COLORS: Mapping[str, str] = {
    "sink": "tab:blue",
    "long": "tab:purple",
    "short": "tab:pink",
    "recent": "tab:orange",
    "current": "tab:green",
}
EXTRA_ROLE_COLORS = ("tab:red", "tab:brown", "tab:olive", "tab:cyan", "tab:gray")  # for other memory roles
FIGURE_SIZE = (13.0, 7.5)
FIGURE_DPI = 110


def plot_attention_mass(
    data_or_path: Mapping[str, Any] | str | Path, output_png: str | Path, *, title: str | None = None
) -> Path:
    """Draw attention-mass statistics into a PNG and return its path.

    Top panel: mean share per role against the chunk (stacked; mean over layers, calls and caches).
    Bottom row: one heatmap per role present, layer x chunk, mean share over calls. Drawn from the
    statistics' ``means`` (every recorded call; version-1 files: from their records) with the Agg
    backend (no display, pyplot's global state untouched).

    Args:
        data_or_path: :meth:`AttentionMassRecorder.to_dict` output or the path of a saved JSON.
        output_png: where to write the figure.
        title: figure title (default: the policy and the number of chunks and layers).

    Raises:
        ImportError: matplotlib is missing (``pip install "memrope[plot]"``).
        ValueError: invalid statistics, or no records to plot.
    """
    if isinstance(data_or_path, (str, Path)):
        data = load_attention_mass(data_or_path)
    else:
        data = check_attention_mass(dict(data_or_path))
    roles = statistics_roles(data)
    means = _statistics_means(data, roles)
    if not any(calls for entry in means for calls in entry["calls"]):
        raise ValueError("the attention-mass statistics hold no records; nothing to plot")
    figure_class, canvas_class = _agg_figure_classes()
    figure = figure_class(figsize=FIGURE_SIZE, layout="constrained")
    canvas_class(figure)
    per_chunk = _per_chunk_from_means(means, roles)
    colors = _role_colors(roles)
    shown = [role for role in roles if any(shares[role] > 0 for shares in per_chunk.values())]
    grid = figure.add_gridspec(2, len(shown), height_ratios=(3, 2))
    stacked_axes = figure.add_subplot(grid[0, :])
    _draw_stacked_shares(stacked_axes, per_chunk, shown, colors)
    figure.legend(*stacked_axes.get_legend_handles_labels(), loc="outside lower center", ncols=len(shown))
    for column, role in enumerate(shown):
        axes = figure.add_subplot(grid[1, column])
        _draw_layer_heatmap(figure, axes, means, (role, colors[role], roles), first=column == 0)
    figure.suptitle(title if title is not None else _default_title(data, means, roles))
    output = Path(output_png)
    figure.savefig(output, dpi=FIGURE_DPI)
    return output


def _statistics_means(data: Mapping[str, Any], roles: Sequence[str]) -> list[dict[str, Any]]:
    """The ``means`` of validated statistics (computed from the records for version 1)."""
    if "means" in data:
        return list(data["means"])
    return _means_from_records(data["records"], roles)


def _role_colors(roles: Sequence[str]) -> dict[str, str]:
    """A colour per role: :data:`ROLE_COLORS` for the built-in ones, then :data:`EXTRA_ROLE_COLORS`."""
    others = [role for role in roles if role not in ROLE_COLORS]
    extra = {role: EXTRA_ROLE_COLORS[index % len(EXTRA_ROLE_COLORS)] for index, role in enumerate(others)}
    return {role: ROLE_COLORS.get(role) or extra[role] for role in roles}


def _agg_figure_classes() -> tuple[type[Figure], Any]:
    """matplotlib's ``Figure`` and the Agg canvas, imported on first use."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"plotting attention mass needs matplotlib: {PLOT_INSTALL_HINT}") from error
    return Figure, FigureCanvasAgg


def _draw_stacked_shares(
    axes: Axes, per_chunk: dict[int, dict[str, float]], roles: Sequence[str], colors: Mapping[str, str]
) -> None:
    """Stacked shares per chunk, each chunk drawn over ``[chunk - 0.5, chunk + 0.5)`` (as in the heatmaps)."""
    chunks = list(per_chunk)
    edges = [chunk - 0.5 for chunk in chunks] + [chunks[-1] + 0.5]
    series = [[per_chunk[chunk][role] for chunk in chunks] for role in roles]
    axes.stackplot(
        edges,
        *[[*values, values[-1]] for values in series],
        labels=roles,
        colors=[colors[role] for role in roles],
        step="post",
    )
    axes.set_xlim(edges[0], edges[-1])
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("chunk")
    axes.set_ylabel("attention share\n(mean over layers and calls)")
    _use_integer_ticks(axes.xaxis)


def _draw_layer_heatmap(
    figure: Figure,
    axes: Axes,
    means: list[dict[str, Any]],
    shown: tuple[str, str, Sequence[str]],
    *,
    first: bool,
) -> None:
    """Heatmap of the mean share per (layer, chunk) of ``shown = (role, its colour, every role)``;
    cells without records stay blank."""
    role, color, roles = shown
    cells, extent = _layer_chunk_means(means, role, roles)
    image = axes.imshow(
        cells, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis", extent=extent
    )
    axes.set_title(role, color=color)
    axes.set_xlabel("chunk")
    _use_integer_ticks(axes.xaxis, axes.yaxis)
    if first:
        axes.set_ylabel("layer")
    figure.colorbar(image, ax=axes, shrink=0.9)


def _layer_chunk_means(
    means: list[dict[str, Any]], role: str, roles: Sequence[str]
) -> tuple[list[list[float]], tuple[float, float, float, float]]:
    """Mean share of ``role`` per layer (rows) and chunk (columns) over caches and calls, NaN where
    nothing was recorded, and the ``imshow`` extent ``(left, right, bottom, top)`` centring each cell
    on its integer."""
    cells = list(_cell_totals(means, roles))
    layers = [layer for layer, _, _, _ in cells]
    chunks = [chunk for _, chunk, _, _ in cells]
    first_chunk, first_layer = min(chunks), min(layers)
    totals = [[0.0] * (max(chunks) - first_chunk + 1) for _ in range(max(layers) - first_layer + 1)]
    counts = [[0] * len(totals[0]) for _ in totals]
    for layer, chunk, calls, shares in cells:
        totals[layer - first_layer][chunk - first_chunk] += shares[role]
        counts[layer - first_layer][chunk - first_chunk] += calls
    grid = [
        [total / count if count else math.nan for total, count in zip(total_row, count_row)]
        for total_row, count_row in zip(totals, counts)
    ]
    extent = (first_chunk - 0.5, max(chunks) + 0.5, first_layer - 0.5, max(layers) + 0.5)
    return grid, extent


def _use_integer_ticks(*axes: Axis) -> None:
    from matplotlib.ticker import MaxNLocator  # optional dependency: imported on use

    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True))


def _default_title(data: Mapping[str, Any], means: list[dict[str, Any]], roles: Sequence[str]) -> str:
    cells = list(_cell_totals(means, roles))
    chunks = len({chunk for _, chunk, _, _ in cells})
    layers = len({layer for layer, _, _, _ in cells})
    policies = sorted(
        {str(layout.get("policy")) for layout in data.get("caches", []) if isinstance(layout, dict)}
    )
    policy = f"policy {'/'.join(policies)}, " if policies else ""
    return f"Attention mass per cache role ({policy}{chunks} chunks, {layers} layers)"
