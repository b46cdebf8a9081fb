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
``max_records`` detailed records; the figure is drawn from the sums, so it covers the whole video.
"""

from __future__ import annotations

import argparse
import json
import math
import weakref
from array import array
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch.utils.hooks import RemovableHandle

from memrope.cache import CURRENT_ROLE, RECENT_ROLE, SINK_ROLE, SLOT_ROLES, CacheContext, MemRoPECache

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

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

ATTENTION_MASS_FORMAT = "memrope.attention_mass"
# 2: running means per (cache, layer, chunk), records bounded by max_records;
# 3: the roles are the recorded caches' role_names, listed in "roles" (1 and 2: always SLOT_ROLES)
ATTENTION_MASS_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DEFAULT_QUERY_BLOCK_SIZE = 128
DEFAULT_MAX_RECORDS = 10_000
CallSelection = Literal["all", "first"]
CALL_SELECTIONS: tuple[str, ...] = ("all", "first")
PLOT_INSTALL_HINT = 'pip install "memrope[plot]"'
REQUIRED_RECORD_FIELDS = ("chunk", "call", "layer", "start_frame", "kind", "shares")
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


# --------------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------------


def slot_attention_mass(
    query: torch.Tensor,
    keys: torch.Tensor,
    frame_seqlen: int,
    *,
    query_block_size: int = DEFAULT_QUERY_BLOCK_SIZE,
) -> torch.Tensor:
    """Softmax attention probability mass on each cache slot, summed over queries and heads.

    Probabilities are computed in float32 with scale ``1/sqrt(D)`` and no mask, ``query_block_size``
    queries at a time, so the transient is about ``2 * B * H * query_block_size * Lk * 4`` bytes
    (Wan 480x832, ``B = 1``, 12 heads, ``Lk = 18720``, 128 queries: ~230 MB) plus float32 copies of
    the queries and keys in ``[B, H, L, D]`` layout (~115 MB for those keys).

    Args:
        query: RoPE'd queries ``[B, Lq, H, D]``.
        keys: RoPE'd keys ``[B, S * frame_seqlen, H, D]`` of ``S`` slots.
        frame_seqlen: tokens per slot.
        query_block_size: queries per block.

    Returns:
        ``[B, S]`` float32 on the query's device; every row sums to ``Lq * H``.
    """
    _check_query_keys(query, keys, frame_seqlen)
    block_size = _check_positive_int("query_block_size", query_block_size)
    head_dim = query.shape[-1]
    slots = keys.shape[1] // frame_seqlen
    scaled_queries = _heads_first_float32(query) * head_dim**-0.5  # [B, H, Lq, D]
    keys_by_head = _heads_first_float32(keys)  # [B, H, Lk, D]
    mass = torch.zeros(query.shape[0], slots, device=query.device, dtype=torch.float32)
    for begin in range(0, query.shape[1], block_size):
        logits = scaled_queries[:, :, begin : begin + block_size] @ keys_by_head.mT  # [B, H, block, Lk]
        probabilities = logits.softmax(dim=-1)
        mass += probabilities.unflatten(-1, (slots, frame_seqlen)).sum(dim=(1, 2, 4))
    return mass


def _heads_first_float32(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, L, H, D]`` -> contiguous float32 ``[B, H, L, D]`` (one copy), so the block matmuls need none."""
    return tokens.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)


def role_attention_shares(
    query: torch.Tensor,
    keys: torch.Tensor,
    slot_roles: Sequence[str],
    frame_seqlen: int,
    *,
    roles: Sequence[str] = SLOT_ROLES,
    query_block_size: int = DEFAULT_QUERY_BLOCK_SIZE,
) -> torch.Tensor:
    """Share of the attention mass on each role, per batch item.

    Args:
        query: RoPE'd queries ``[B, Lq, H, D]``.
        keys: RoPE'd keys ``[B, len(slot_roles) * frame_seqlen, H, D]``.
        slot_roles: the role of each slot of ``keys`` (see :meth:`MemRoPECache.slot_roles`).
        frame_seqlen: tokens per slot.
        roles: the roles to report, in order (default :data:`~memrope.cache.SLOT_ROLES`; a cache's
            own are :attr:`MemRoPECache.role_names`); ``slot_roles`` must be among them.
        query_block_size: queries per block (see :func:`slot_attention_mass`).

    Returns:
        ``[B, len(roles)]`` float32 shares in ``roles`` order, the mean over queries and heads (each
        row sums to 1); on the query's device, nothing synced.
    """
    _check_query_keys(query, keys, frame_seqlen)
    roles = _check_roles("roles", roles)
    unknown = sorted(set(slot_roles) - set(roles))
    if unknown:
        raise ValueError(f"slot_roles must hold roles from {roles}, got {unknown}")
    if keys.shape[1] != len(slot_roles) * frame_seqlen:
        raise ValueError(
            f"keys must hold len(slot_roles) * frame_seqlen = {len(slot_roles)} * {frame_seqlen} tokens, "
            f"got {keys.shape[1]}"
        )
    slot_mass = slot_attention_mass(query, keys, frame_seqlen, query_block_size=query_block_size)
    role_mass = {role: slot_mass.new_zeros(slot_mass.shape[0]) for role in roles}
    for role, first_slot, end_slot in _role_runs(slot_roles):
        role_mass[role] = role_mass[role] + slot_mass[:, first_slot:end_slot].sum(dim=1)
    queries_times_heads = query.shape[1] * query.shape[2]
    return torch.stack([role_mass[role] for role in roles], dim=1) / queries_times_heads


def _check_roles(name: str, roles: object) -> tuple[str, ...]:
    """``roles`` as a tuple of distinct non-empty names; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(roles, str) or not isinstance(roles, Sequence):
        raise TypeError(f"{name} must be a sequence of role names such as {SLOT_ROLES}, got {roles!r}")
    names = tuple(roles)
    distinct = len(set(names)) == len(names)
    if not names or not distinct or not all(isinstance(role, str) and role for role in names):
        raise ValueError(f"{name} must be distinct non-empty role names such as {SLOT_ROLES}, got {roles!r}")
    return names


def merge_roles(*role_lists: Iterable[str]) -> tuple[str, ...]:
    """Every role of ``role_lists`` once, in display order: sink, the memory roles (first seen first),
    recent, current. ``merge_roles(SLOT_ROLES) == SLOT_ROLES``."""
    seen = dict.fromkeys(role for roles in role_lists for role in roles)
    edges = (SINK_ROLE, RECENT_ROLE, CURRENT_ROLE)
    memory = [role for role in seen if role not in edges]
    first = [SINK_ROLE] if SINK_ROLE in seen else []
    return (*first, *memory, *(role for role in (RECENT_ROLE, CURRENT_ROLE) if role in seen))


def _role_runs(slot_roles: Sequence[str]) -> list[tuple[str, int, int]]:
    """Maximal runs of equal roles as ``(role, first slot, end slot)`` (slicing, no index tensors)."""
    runs: list[tuple[str, int, int]] = []
    for slot, role in enumerate(slot_roles):
        if runs and runs[-1][0] == role:
            runs[-1] = (role, runs[-1][1], slot + 1)
        else:
            runs.append((role, slot, slot + 1))
    return runs


def _check_query_keys(query: torch.Tensor, keys: torch.Tensor, frame_seqlen: int) -> None:
    for name, tensor in (("query", query), ("keys", keys)):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
            raise ValueError(f"{name} must be a [B, L, H, D] tensor, got {_describe(tensor)}")
    _check_positive_int("frame_seqlen", frame_seqlen)
    batch, _, heads, head_dim = query.shape
    if (keys.shape[0], keys.shape[2], keys.shape[3]) != (batch, heads, head_dim):
        raise ValueError(
            f"keys must have the query's B, H, D = {(batch, heads, head_dim)}, got shape {list(keys.shape)}"
        )
    if keys.shape[1] % frame_seqlen:
        raise ValueError(
            f"keys must hold whole slots of frame_seqlen={frame_seqlen} tokens, got {keys.shape[1]}"
        )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return type(value).__name__


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------------------------------


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
            raise ValueError(f"max_records must be an int >= 0 or None (keep every record), got {max_records!r}")
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


def _with_roles(
    record: dict[str, Any], roles: tuple[str, ...], own_roles: tuple[str, ...]
) -> dict[str, Any]:
    """``record`` (shares of its cache's ``own_roles``) naming every role of ``roles``, 0 for the others."""
    if own_roles == roles:
        return record
    return {
        **record,
        "shares": {role: record["shares"].get(role, 0.0) for role in roles},
        "item_shares": [{role: item.get(role, 0.0) for role in roles} for item in record["item_shares"]],
    }


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
        return {"cache": cache, "layer": layer, "first_chunk": self.first_chunk, "calls": calls, "shares": shares}


def _means_from_records(
    records: Iterable[Mapping[str, Any]], roles: Sequence[str]
) -> list[dict[str, Any]]:
    """The :meth:`AttentionMassRecorder.means` of ``records`` (for version-1 files, which hold only records)."""
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


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def load_attention_mass(path: str | Path) -> dict[str, Any]:
    """Read statistics written by :meth:`AttentionMassRecorder.save`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not JSON, not tagged ``format = "memrope.attention_mass"``, has an
            unknown version or malformed records.
    """
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: not a memrope attention-mass JSON file ({error})") from None
    return check_attention_mass(data, source=str(source))


def check_attention_mass(data: object, *, source: str = "data") -> dict[str, Any]:
    """Validate attention-mass statistics (a :meth:`AttentionMassRecorder.to_dict` result) and return them.

    Raises:
        ValueError: naming ``source`` and what is wrong (format tag, version, records).
    """
    problem = _statistics_problem(data)
    if problem is not None:
        raise ValueError(f"{source}: {problem}")
    return cast("dict[str, Any]", data)


def _statistics_problem(data: object) -> str | None:
    """What makes ``data`` unreadable as attention-mass statistics, or ``None``."""
    if not isinstance(data, dict):
        return (
            f"not memrope attention-mass statistics: expected an object with format "
            f"{ATTENTION_MASS_FORMAT!r}, got {type(data).__name__}"
        )
    if data.get("format") != ATTENTION_MASS_FORMAT:
        return (
            f"not memrope attention-mass statistics: format must be {ATTENTION_MASS_FORMAT!r}, "
            f"got {data.get('format')!r}"
        )
    version = data.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        readable = " or ".join(map(str, READABLE_VERSIONS))
        return f"attention-mass version {version!r} is not supported (expected {readable})"
    if not isinstance(data.get("caches", []), list):
        return "'caches' must be a list of cache layouts"
    roles = _listed_roles(data, version)
    if roles is None:
        return f"'roles' must be a list of distinct role names (version {version}), got {data.get('roles')!r}"
    records = data.get("records")
    if not isinstance(records, list):
        return f"'records' must be a list, got {type(records).__name__}"
    for index, record in enumerate(records):
        problem = _record_problem(record, roles)
        if problem is not None:
            return f"record {index}: {problem}"
    if version == 1:
        return None
    means = data.get("means")
    if not isinstance(means, list):
        return f"'means' must be a list (version {version}), got {type(means).__name__}"
    for index, entry in enumerate(means):
        problem = _means_entry_problem(entry, roles)
        if problem is not None:
            return f"means entry {index}: {problem}"
    return None


def _is_count(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 0


def _is_share(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _listed_roles(data: Mapping[str, Any], version: int) -> list[str] | None:
    """The roles of statistics of ``version`` (before 3: :data:`SLOT_ROLES`); ``None`` for a bad list."""
    if version < 3:
        return list(SLOT_ROLES)
    listed = data.get("roles")
    if not isinstance(listed, list) or not all(isinstance(role, str) and role for role in listed):
        return None
    return listed if len(set(listed)) == len(listed) else None


def statistics_roles(data: Mapping[str, Any]) -> tuple[str, ...]:
    """The roles of validated statistics: their ``"roles"`` (version 3), :data:`SLOT_ROLES` before."""
    return tuple(data["roles"]) if data["version"] >= 3 else SLOT_ROLES


def _means_entry_problem(entry: object, roles: Sequence[str]) -> str | None:
    """What is wrong with one entry of ``means``, or ``None``."""
    if not isinstance(entry, dict):
        return f"must be an object, got {type(entry).__name__}"
    missing = [name for name in ("cache", "layer", "first_chunk", "calls", "shares") if name not in entry]
    if missing:
        return f"lacks {missing}"
    for name in ("cache", "layer", "first_chunk"):
        if not _is_count(entry[name]):
            return f"{name!r} must be an int >= 0, got {entry[name]!r}"
    calls = entry["calls"]
    if not isinstance(calls, list) or not all(_is_count(count) for count in calls):
        return "'calls' must be a list of ints >= 0 (calls per chunk)"
    shares = entry["shares"]
    if not isinstance(shares, dict) or set(shares) != set(roles):
        return f"'shares' must map every role of {tuple(roles)} to a list of shares per chunk"
    for role, values in shares.items():
        if not isinstance(values, list) or len(values) != len(calls) or not all(map(_is_share, values)):
            return f"shares of {role!r} must be {len(calls)} finite numbers (one per chunk of 'calls')"
    return None


def _record_problem(record: object, roles: Sequence[str]) -> str | None:
    """What is wrong with one record, or ``None``."""
    if not isinstance(record, dict):
        return f"must be an object, got {type(record).__name__}"
    missing = [name for name in REQUIRED_RECORD_FIELDS if name not in record]
    if missing:
        return f"lacks {missing}"
    for name in ("chunk", "call", "layer", "start_frame"):
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{name!r} must be an int >= 0, got {value!r}"
    shares = record["shares"]
    if not isinstance(shares, dict) or not set(shares) <= set(roles):
        return f"'shares' must map roles from {tuple(roles)} to numbers, got {shares!r}"
    for role, share in shares.items():
        if not _is_share(share):
            return f"share of {role!r} must be a finite number, got {share!r}"
    return None


# --------------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# memrope plot-attention
# --------------------------------------------------------------------------------------------------

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
    from memrope.cli import EXIT_FAILURE, EXIT_OK, CLIError  # not at the top: memrope.cli imports this module

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
