"""Running sums of the shares per (cache, layer, chunk) and the per-chunk means computed from them."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from memrope.diagnostics.measure import merge_roles


class _ChunkShareSums:
    """Running sums of one (cache, layer)'s shares per chunk: one float per role and a call count per
    chunk from ``first_chunk`` on (48 bytes a chunk for the five ``memrope`` roles)."""

    def __init__(self, first_chunk: int, roles: Sequence[str]) -> None:
        self.first_chunk = first_chunk
        self.roles = tuple(roles)
        self.sums = array("d")  # [chunks * len(roles)]
        self.calls = array("q")  # [chunks]

    def add(self, chunk: int, shares: Sequence[float]) -> None:
        """Add one call's shares (in :attr:`roles` order) to ``chunk``."""
        roles = len(self.roles)
        if chunk < self.first_chunk:  # a reset cache starts again from chunk 0
            missing = self.first_chunk - chunk
            self.sums = array("d", [0.0]) * (missing * roles) + self.sums
            self.calls = array("q", [0]) * missing + self.calls
            self.first_chunk = chunk
        offset = chunk - self.first_chunk
        if offset >= len(self.calls):
            missing = offset + 1 - len(self.calls)
            self.sums.extend(array("d", [0.0]) * (missing * roles))
            self.calls.extend(array("q", [0]) * missing)
        self.calls[offset] += 1
        for position, share in enumerate(shares):
            self.sums[offset * roles + position] += share

    def to_dict(self, cache: int, layer: int, *, roles: Sequence[str]) -> dict[str, Any]:
        """The means entry naming every role of ``roles`` (0 for roles this cache does not have)."""
        width = len(self.roles)
        calls = list(self.calls)
        position = {role: index for index, role in enumerate(self.roles)}
        shares = {
            role: [
                self.sums[chunk * width + position[role]] / count if count and role in position else 0.0
                for chunk, count in enumerate(calls)
            ]
            for role in roles
        }
        return {
            "cache": cache,
            "layer": layer,
            "first_chunk": self.first_chunk,
            "calls": calls,
            "shares": shares,
        }


def _means_from_records(records: Iterable[Mapping[str, Any]], roles: Sequence[str]) -> list[dict[str, Any]]:
    """The :meth:`AttentionMassRecorder.means` of ``records`` (version-1 files hold only records)."""
    sums: dict[tuple[int, int], _ChunkShareSums] = {}
    for record in records:
        key = (int(record.get("cache", 0)), record["layer"])
        if key not in sums:
            sums[key] = _ChunkShareSums(record["chunk"], roles)
        sums[key].add(record["chunk"], [record["shares"].get(role, 0.0) for role in roles])
    return [sums[key].to_dict(*key, roles=roles) for key in sorted(sums)]


def _cell_totals(
    means: Iterable[Mapping[str, Any]], roles: Sequence[str]
) -> Iterator[tuple[int, int, int, dict[str, float]]]:
    """``(layer, chunk, calls, {role: summed share})`` of every (cache, layer, chunk) with recorded calls."""
    for entry in means:
        for offset, calls in enumerate(entry["calls"]):
            if calls:
                totals: dict[str, float] = {role: entry["shares"][role][offset] * calls for role in roles}
                yield entry["layer"], entry["first_chunk"] + offset, calls, totals


def _per_chunk_from_means(
    means: Iterable[Mapping[str, Any]], roles: Sequence[str]
) -> dict[int, dict[str, float]]:
    """Mean share of each role per chunk over every call in ``means``, sorted by chunk."""
    totals: dict[int, dict[str, float]] = {}
    counts: dict[int, int] = {}
    for _, chunk, calls, shares in _cell_totals(means, roles):
        chunk_totals = totals.setdefault(chunk, dict.fromkeys(roles, 0.0))
        for role in roles:
            chunk_totals[role] += shares[role]
        counts[chunk] = counts.get(chunk, 0) + calls
    return {
        chunk: {role: total / counts[chunk] for role, total in totals[chunk].items()}
        for chunk in sorted(totals)
    }


def mean_shares_per_chunk(
    records: Iterable[Mapping[str, Any]], roles: Sequence[str] | None = None
) -> dict[int, dict[str, float]]:
    """Mean share of each role per chunk over ``records``: ``{chunk: {role: share}}``, sorted by chunk.

    ``roles`` (default: every role the records name, in :func:`merge_roles` order) are the keys of
    every inner dict; a role a record lacks counts as 0.
    """
    records = list(records)
    if roles is None:
        roles = merge_roles(*(record["shares"] for record in records))
    totals: dict[int, dict[str, float]] = {}
    counts: dict[int, int] = {}
    for record in records:
        chunk = record["chunk"]
        chunk_totals = totals.setdefault(chunk, dict.fromkeys(roles, 0.0))
        for role in roles:
            chunk_totals[role] += record["shares"].get(role, 0.0)
        counts[chunk] = counts.get(chunk, 0) + 1
    return {
        chunk: {role: total / counts[chunk] for role, total in totals[chunk].items()}
        for chunk in sorted(totals)
    }
