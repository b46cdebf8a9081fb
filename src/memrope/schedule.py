"""Deprecated: prompt schedules moved to :mod:`memrope.prompt_schedule`.

``memrope.schedule`` and ``memrope.scheduler`` (the flow-matching schedule) differed by one letter;
this alias keeps old imports working, with a ``DeprecationWarning``, until the next minor release.
"""

from __future__ import annotations

import warnings

from memrope.prompt_schedule import (
    LATENT_FRAMES_PER_SECOND,
    ScheduledPrompt,
    format_prompt_schedule,
    latent_frames_at_least,
    parse_prompt_schedule,
    round_up_to_chunk,
    video_frame_count,
    video_seconds,
)

__all__ = [
    "LATENT_FRAMES_PER_SECOND",
    "ScheduledPrompt",
    "format_prompt_schedule",
    "latent_frames_at_least",
    "parse_prompt_schedule",
    "round_up_to_chunk",
    "video_frame_count",
    "video_seconds",
]

warnings.warn(
    "memrope.schedule is deprecated: import prompt schedules from memrope.prompt_schedule "
    "(and lengths from memrope.video_lengths)",
    DeprecationWarning,
    stacklevel=2,
)
