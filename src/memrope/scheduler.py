"""Deprecated: the flow-matching schedule moved to :mod:`memrope.flow_matching`.

``memrope.scheduler`` and ``memrope.schedule`` (prompt schedules) differed by one letter; this
alias keeps old imports working, with a ``DeprecationWarning``, until the next minor release.
"""

from __future__ import annotations

import warnings

from memrope.flow_matching import FlowMatchScheduler

__all__ = ["FlowMatchScheduler"]

warnings.warn(
    "memrope.scheduler is deprecated: import FlowMatchScheduler from memrope.flow_matching",
    DeprecationWarning,
    stacklevel=2,
)
