"""Policy ``memrope``: evicted frames folded into a long and a short EMA memory frame (``docs/design.md`` §5).

Official ``compression_method: ema``. The evicted block is pooled (the mean over all its tokens, or
per spatial position) and the two memories move towards it: ``m <- a * pooled + (1 - a) * m``, with
``alpha_long`` for the long memory and ``alpha_short`` (or the official adaptive per-position rate)
for the short one. On the first eviction both memories start at the pooled block; the frames that
sat in the memory slots until then are dropped, as in the official code.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from memrope.policies.base import CachePolicy, MemorySlot
from memrope.policies.registry import register_policy

if TYPE_CHECKING:
    from memrope.config import MemRoPEConfig

__all__ = ["ADAPTIVE_RATE_MAX_FACTOR", "ADAPTIVE_RATE_MIN_FACTOR", "MOTION_EPS", "MemRoPEPolicy"]

ADAPTIVE_RATE_MIN_FACTOR = 0.1
ADAPTIVE_RATE_MAX_FACTOR = 5.0
MOTION_EPS = 1e-8


@register_policy
class MemRoPEPolicy(CachePolicy):
    """Sink + long/short EMA memory tokens + recent window + chunk (the paper's cache)."""

    name = "memrope"
    memory_slots = ("long", "short")

    @classmethod
    def check_config(cls, config: MemRoPEConfig) -> None:
        """The base checks, then a warning (never a refusal) for rates that are rarely meant."""
        super().check_config(config)
        peak_short_rate = config.alpha_short * (
            ADAPTIVE_RATE_MAX_FACTOR if config.adaptive_short_rate else 1.0
        )
        if peak_short_rate > 1.0:
            warnings.warn(
                f"alpha_short={config.alpha_short} with adaptive_short_rate=True lets the per-position short-memory "
                f"rate reach {peak_short_rate:g} > 1 at the highest-motion positions (over-relaxation, as in the "
                f"official code; above 2 the short memory diverges); use alpha_short <= "
                f"{1 / ADAPTIVE_RATE_MAX_FACTOR:g} to keep it within [0, 1]",
                UserWarning,
                stacklevel=5,
            )
        for name in ("alpha_long", "alpha_short"):
            if getattr(config, name) == 0.0:
                warnings.warn(
                    f"{name}=0 freezes that EMA memory at the pooled value of the first evicted frames; "
                    "use a small positive rate (the paper: alpha_long=0.01, alpha_short=0.1) for an evolving memory",
                    UserWarning,
                    stacklevel=5,
                )

    def memory_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{long,short}_{keys,values}``: ``[B, 1, H, D]`` (mean pooling) or ``[B, P, H, D]`` (per position)."""
        geometry = self.geometry
        positions = 1 if self.config.pooling == "mean" else geometry.frame_seqlen
        shape = (geometry.batch_size, positions, geometry.num_heads, geometry.head_dim)
        return {f"{which}_{name}": shape for which in ("long", "short") for name in ("keys", "values")}

    def evict(
        self, memory: dict[str, torch.Tensor], keys: torch.Tensor, values: torch.Tensor
    ) -> list[MemorySlot]:
        """Pool the evicted block and move both memories towards it (initialise them on the first eviction)."""
        pooled = {"keys": self._pool(keys), "values": self._pool(values)}
        if not memory:
            for name, tensor in pooled.items():
                memory[f"long_{name}"] = tensor.clone()
                memory[f"short_{name}"] = tensor
        else:
            alpha_long = self.config.alpha_long
            short_rate: torch.Tensor | float = self.config.alpha_short
            if self.config.adaptive_short_rate:
                short_rate = self._adaptive_rate(pooled["keys"], memory["short_keys"])
            for name, tensor in pooled.items():
                long_memory, short_memory = memory[f"long_{name}"], memory[f"short_{name}"]
                long_memory.copy_(alpha_long * tensor + (1 - alpha_long) * long_memory)
                short_memory.copy_(short_rate * tensor + (1 - short_rate) * short_memory)
        return [(memory["long_keys"], memory["long_values"]), (memory["short_keys"], memory["short_values"])]

    def _pool(self, frames: torch.Tensor) -> torch.Tensor:
        """Pool ``[B, n * P, H, D]`` to ``[B, 1, H, D]`` (mean) or ``[B, P, H, D]`` (per position)."""
        frames = frames.to(self.geometry.memory_dtype)
        if self.config.pooling == "mean":
            return frames.mean(dim=1, keepdim=True)
        tokens = self.geometry.frame_seqlen
        return frames.unflatten(1, (frames.shape[1] // tokens, tokens)).mean(dim=1)

    def _adaptive_rate(self, pooled_keys: torch.Tensor, short_keys: torch.Tensor) -> torch.Tensor:
        """Per-position short-memory rate ``a_short * (0.1 + 4.9 * motion)``, shape ``[B, P, 1, 1]``."""
        motion = (pooled_keys - short_keys).norm(dim=-1).mean(dim=-1)
        motion = motion / (motion.amax(dim=1, keepdim=True) + MOTION_EPS)
        span = ADAPTIVE_RATE_MAX_FACTOR - ADAPTIVE_RATE_MIN_FACTOR
        rate = self.config.alpha_short * (ADAPTIVE_RATE_MIN_FACTOR + span * motion)
        return rate[:, :, None, None]
