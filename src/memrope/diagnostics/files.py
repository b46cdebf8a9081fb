"""The statistics file: reading and validating what :meth:`AttentionMassRecorder.save` writes."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from memrope.cache import SLOT_ROLES

ATTENTION_MASS_FORMAT = "memrope.attention_mass"
# 2: running means per (cache, layer, chunk), records bounded by max_records;
# 3: the roles are the recorded caches' role_names, listed in "roles" (1 and 2: always SLOT_ROLES)
ATTENTION_MASS_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
REQUIRED_RECORD_FIELDS = ("chunk", "call", "layer", "start_frame", "kind", "shares")


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
