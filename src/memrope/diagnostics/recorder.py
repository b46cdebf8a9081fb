"""The recorder: an attention hook measuring the share of each cache role on every attention call."""

from __future__ import annotations

import json
import weakref
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.hooks import RemovableHandle

from memrope.cache import CacheContext, MemRoPECache
from memrope.diagnostics.files import ATTENTION_MASS_FORMAT, ATTENTION_MASS_VERSION
from memrope.diagnostics.measure import (
    DEFAULT_QUERY_BLOCK_SIZE,
    _check_positive_int,
    merge_roles,
    role_attention_shares,
)
from memrope.diagnostics.sums import _ChunkShareSums, _per_chunk_from_means

DEFAULT_MAX_RECORDS = 10_000
CallSelection = Literal["all", "first"]
CALL_SELECTIONS: tuple[str, ...] = ("all", "first")


@dataclass(frozen=True)
class _CallInfo:
    """Where one recorded attention call sits: which cache, chunk, call of the chunk and layer."""

    cache: int
    chunk: int
    call: int
    layer: int
    start_frame: int
    kind: str


class AttentionMassRecorder:
    """Attention hook recording the attention share of each cache role on every call.

    Attach it to one or several caches (:meth:`attach`, :meth:`attached`, or
    ``cache.register_attention_hook(recorder)``). Each recorded call gives one record::

        {"cache": 0, "chunk": 5, "call": 0, "layer": 3, "start_frame": 15, "kind": "advance",
         "shares": {"sink": .., "long": .., "short": .., "recent": .., "current": ..},
         "item_shares": [{role: share, ...} per batch item]}

    * ``cache``: index of the cache in the order the recorder first saw it (see ``to_dict()["caches"]``).
    * ``chunk``: ``chunk_start // chunk_frames`` of the layer; ``start_frame``: the call's first frame
      (the recache window's inside :meth:`MemRoPECache.recaching`).
    * ``call``: 0-based index of the call within the chunk for that layer (the advance call is 0,
      then the rewrite calls, then any recache calls); exact when attached before a chunk starts.
    * ``kind``: ``"advance"``, ``"rewrite"`` or ``"recache"``.
    * ``shares``: mean over queries, heads and batch items; ``item_shares``: the same per batch item
      (items are independent videos). Every share dict sums to 1 and names every role of
      :attr:`roles` (0 for roles absent at that call, e.g. memory while filling, or absent from that
      cache when caches of several policies are recorded).

    The roles are those of the recorded caches (:attr:`MemRoPECache.role_names`): ``sink``,
    ``long``, ``short``, ``recent``, ``current`` for the ``memrope`` policy, no memory roles for
    ``sink`` and ``full``, a third-party policy's memory slot names for its caches.

    Memory: every recorded call is added to running sums per (cache, layer, chunk) (8 bytes per role
    and chunk and 8 per chunk: 48 for the ``memrope`` roles), from which :meth:`per_chunk`,
    :meth:`means` and the figure are computed; of the records themselves only the most recent
    ``max_records`` are kept (:attr:`records`; the older ones are counted in :attr:`records_total`).
    So memory stays flat over a long video.

    Host syncs: none per call. The sums of a chunk stay on the device and move to the host in one
    ``.tolist()`` when a call of another chunk (or cache) arrives or when the results are read
    (:attr:`records`, :meth:`per_chunk`, :meth:`means`, :meth:`to_dict`, :meth:`save`). Each
    recorded call costs a float32 softmax over the whole context (see :func:`slot_attention_mass`
    for the transient memory). Under ``torch.compile`` the cache runs hooks eagerly, so compile
    without ``fullgraph=True`` while recording.

    Args:
        layers: layer indices to record (default: all).
        calls: ``"all"`` (default: every denoising step, the clean context refresh and recache
            calls), ``"first"`` (only each chunk's first call: the first, noisiest denoising step)
            or a collection of call indices (e.g. ``range(4)``: the 4 denoising steps).
        query_block_size: queries per block of the softmax (bounds the transient memory).
        max_records: how many of the most recent records to keep (default 10,000, about 15 MB);
            ``None`` keeps every record (memory then grows with the video), 0 keeps only the sums.
    """

    def __init__(
        self,
        *,
        layers: Collection[int] | None = None,
        calls: CallSelection | Collection[int] = "all",
        query_block_size: int = DEFAULT_QUERY_BLOCK_SIZE,
        max_records: int | None = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.layers = _check_index_set("layers", layers, "layer indices")
        self.calls = _check_calls(calls)
        self.query_block_size = _check_positive_int("query_block_size", query_block_size)
        if max_records is not None and (
            isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 0
        ):
            raise ValueError(
                f"max_records must be an int >= 0 or None (keep every record), got {max_records!r}"
            )
        self.max_records = max_records
        self._cache_indices: weakref.WeakKeyDictionary[MemRoPECache, int] = weakref.WeakKeyDictionary()
        self._cache_layouts: list[dict[str, Any]] = []
        self._cache_roles: list[tuple[str, ...]] = []  # role_names of each recorded cache
        self._last_calls: dict[tuple[int, int], tuple[int, int]] = {}  # (cache, layer) -> (chunk, call)
        self._pending: list[tuple[_CallInfo, torch.Tensor]] = []
        self._records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self._records_total = 0
        self._sums: dict[tuple[int, int], _ChunkShareSums] = {}

    def __call__(self, cache: MemRoPECache, layer: int, query: torch.Tensor, context: CacheContext) -> None:
        """Record one attention call (the :class:`~memrope.cache.AttentionHook` signature)."""
        if self.layers is not None and layer not in self.layers:
            return
        info = self._call_info(cache, layer)
        if self.calls is not None and info.call not in self.calls:
            return
        with torch.no_grad():
            shares = role_attention_shares(
                query,
                context.keys,
                cache.slot_roles(layer),
                cache.frame_seqlen,
                roles=self._cache_roles[info.cache],
                query_block_size=self.query_block_size,
            )
        if self._pending and (self._pending[-1][0].cache, self._pending[-1][0].chunk) != (
            info.cache,
            info.chunk,
        ):
            self._flush()
        self._pending.append((info, shares))

    def _call_info(self, cache: MemRoPECache, layer: int) -> _CallInfo:
        kind = cache.last_call_kind(layer)
        if kind is None:
            raise ValueError(
                f"layer {layer} of the cache has had no attention call; the recorder must be called as an "
                "attention hook (cache.register_attention_hook)"
            )
        cache_index = self._cache_index(cache)
        state = cache.layers[layer]
        chunk = state.chunk_start // cache.config.chunk_frames
        last_chunk, last_call = self._last_calls.get((cache_index, layer), (chunk, -1))
        call = 0 if kind == "advance" or last_chunk != chunk else last_call + 1
        self._last_calls[(cache_index, layer)] = (chunk, call)
        recache_window = cache.active_recache_window
        start_frame = (
            recache_window[0] if kind == "recache" and recache_window is not None else state.chunk_start
        )
        return _CallInfo(cache_index, chunk, call, layer, start_frame, kind)

    def _cache_index(self, cache: MemRoPECache) -> int:
        if cache not in self._cache_indices:
            self._cache_indices[cache] = len(self._cache_layouts)
            self._cache_layouts.append(_cache_layout(cache))
            self._cache_roles.append(tuple(cache.role_names))
        return self._cache_indices[cache]

    def _flush(self) -> None:
        """Move the pending shares to the host (one sync), add them to the sums and keep their records."""
        if not self._pending:
            return
        device = self._pending[0][1].device
        item_rows = torch.stack([shares.to(device) for _, shares in self._pending]).tolist()  # [N, B, R]
        for (info, _), rows in zip(self._pending, item_rows):
            roles = self._cache_roles[info.cache]
            record = _record(info, rows, roles)
            key = (info.cache, info.layer)
            if key not in self._sums:
                self._sums[key] = _ChunkShareSums(info.chunk, roles)
            self._sums[key].add(info.chunk, [record["shares"][role] for role in roles])
            if self.max_records != 0:
                self._records.append(record)
            self._records_total += 1
        self._pending = []

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles every share names: those of the recorded caches, merged in display order (sink,
        memory roles, recent, current); ``()`` before the first recorded call."""
        return merge_roles(*self._cache_roles)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The most recent ``max_records`` records, in call order, each naming every role of
        :attr:`roles` (syncs pending device sums; do not modify the dicts)."""
        self._flush()
        roles = self.roles
        return [_with_roles(record, roles, self._cache_roles[record["cache"]]) for record in self._records]

    @property
    def records_total(self) -> int:
        """How many calls were recorded, including those whose records were dropped (``max_records``)."""
        self._flush()
        return self._records_total

    def means(self) -> list[dict[str, Any]]:
        """Mean shares of every recorded call, per cache, layer and chunk (JSON-able).

        Returns:
            one entry per recorded (cache, layer): ``{"cache", "layer", "first_chunk", "calls": [n per
            chunk], "shares": {role: [mean share per chunk]}}``, the lists indexed by ``chunk -
            first_chunk`` (0 calls and shares for chunks without a recorded call).
        """
        self._flush()
        roles = self.roles
        return [self._sums[key].to_dict(*key, roles=roles) for key in sorted(self._sums)]

    def per_chunk(self) -> dict[int, dict[str, float]]:
        """Mean share of each role per chunk, over layers, calls and caches: ``{chunk: {role: share}}``.

        Computed from the running sums, so every recorded call counts (dropped records included).
        """
        return _per_chunk_from_means(self.means(), self.roles)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able statistics: format tag, version, :attr:`roles`, the recorded ``layers`` and
        ``calls`` (``None``: all), the layout of each cache (policy, cache/sink/memory/chunk frames,
        frame_seqlen, ...), the :meth:`means` of every recorded call, ``records_total``,
        ``max_records`` and the kept records."""
        return {
            "format": ATTENTION_MASS_FORMAT,
            "version": ATTENTION_MASS_VERSION,
            "roles": list(self.roles),
            "layers": None if self.layers is None else sorted(self.layers),
            "calls": None if self.calls is None else sorted(self.calls),
            "caches": [dict(layout) for layout in self._cache_layouts],
            "means": self.means(),
            "records_total": self.records_total,
            "max_records": self.max_records,
            "records": self.records,
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return target

    def clear(self) -> None:
        """Forget every record, sum and call count (hooks stay attached)."""
        self._cache_indices = weakref.WeakKeyDictionary()
        self._cache_layouts = []
        self._cache_roles = []
        self._last_calls = {}
        self._pending = []
        self._records = deque(maxlen=self.max_records)
        self._records_total = 0
        self._sums = {}

    def attach(self, cache: MemRoPECache) -> RemovableHandle:
        """Register this recorder as an attention hook of ``cache``; ``handle.remove()`` detaches it."""
        if not isinstance(cache, MemRoPECache):
            raise TypeError(f"cache must be a MemRoPECache, got {type(cache).__name__}")
        if self.layers is not None and max(self.layers) >= cache.num_layers:
            raise ValueError(
                f"layers must be indices in [0, {cache.num_layers}) for this cache, got {sorted(self.layers)}"
            )
        return cache.register_attention_hook(self)

    @contextmanager
    def attached(self, cache: MemRoPECache) -> Iterator[AttentionMassRecorder]:
        """``with recorder.attached(cache): ...`` records the calls inside the block, then detaches."""
        handle = self.attach(cache)
        try:
            yield self
        finally:
            handle.remove()


def _check_index_set(name: str, values: Collection[int] | None, what: str) -> frozenset[int] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Collection):
        raise TypeError(f"{name} must be None or a collection of {what} (ints >= 0), got {values!r}")
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(f"{name} must be a non-empty collection of {what} (ints >= 0), got {values!r}")
    return frozenset(values)


def _check_calls(calls: CallSelection | Collection[int]) -> frozenset[int] | None:
    """``None`` for every call, else the recorded call indices."""
    if isinstance(calls, str):
        if calls not in CALL_SELECTIONS:
            raise ValueError(
                f"calls must be one of {CALL_SELECTIONS} or a collection of call indices, got {calls!r}"
            )
        return None if calls == "all" else frozenset({0})
    return _check_index_set("calls", calls, "call indices")


def _cache_layout(cache: MemRoPECache) -> dict[str, Any]:
    config = cache.config
    return {
        "policy": config.policy,
        "cache_frames": config.cache_frames if config.bounded else None,
        "sink_frames": config.sink_frames,
        "memory_frames": config.memory_frames,
        "chunk_frames": config.chunk_frames,
        "frame_seqlen": cache.frame_seqlen,
        "frame_shape": list(cache.frame_shape),
        "num_layers": cache.num_layers,
        "num_heads": cache.num_heads,
        "batch_size": cache.batch_size,
    }


def _record(info: _CallInfo, item_rows: list[list[float]], roles: Sequence[str]) -> dict[str, Any]:
    """One record from a call's per-item shares ``[B][len(roles)]`` (its cache's roles)."""
    item_shares = [dict(zip(roles, row)) for row in item_rows]
    shares = {role: sum(item[role] for item in item_shares) / len(item_shares) for role in roles}
    return {
        "cache": info.cache,
        "chunk": info.chunk,
        "call": info.call,
        "layer": info.layer,
        "start_frame": info.start_frame,
        "kind": info.kind,
        "shares": shares,
        "item_shares": item_shares,
    }


def _with_roles(record: dict[str, Any], roles: tuple[str, ...], own_roles: tuple[str, ...]) -> dict[str, Any]:
    """``record`` (shares of its cache's ``own_roles``) naming every role of ``roles``, 0 for the others."""
    if own_roles == roles:
        return record
    return {
        **record,
        "shares": {role: record["shares"].get(role, 0.0) for role in roles},
        "item_shares": [{role: item.get(role, 0.0) for role in roles} for item in record["item_shares"]],
    }
