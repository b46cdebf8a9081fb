"""The measurement: softmax attention mass per cache slot and its share per cache role.

A *share* is the softmax probability mass (scale ``1/sqrt(D)``, no mask, float32) the queries put on
one role's slots, averaged over queries and heads; the shares of a call sum to 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from memrope.cache import CURRENT_ROLE, RECENT_ROLE, SINK_ROLE, SLOT_ROLES

DEFAULT_QUERY_BLOCK_SIZE = 128


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
