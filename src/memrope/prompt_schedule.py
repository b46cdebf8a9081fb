"""Video lengths in whole chunks, and prompt schedules: which prompt is in force from which latent frame.

Lengths (re-exported from :mod:`memrope.video_lengths`): ``N`` latent frames decode to ``4N - 3``
video frames at 16 fps, and a video is made of whole chunks. :func:`latent_frames_at_least` turns a
duration a person asks for into the shortest whole-chunk video at least that long (4 s with chunks of
3 -> 18 latent frames = 69 frames = 4.31 s) and :func:`round_up_to_chunk` a latent frame count into
the next whole chunk.

LongLive-style interactive videos switch prompts mid-video. A schedule is written as entries
``START:PROMPT`` separated by ``;`` (or one entry per line in a file), ``START`` being a latent frame
(``120``) or a time in seconds (``30s``, 4 latent frames per second at 16 fps)::

    0:a cat sits on a windowsill;120:the cat jumps down;30.75s:the cat walks out of the room

A switch happens at a chunk boundary, so a ``START`` inside a chunk moves to the first chunk boundary
at or after it (``10s`` = latent frame 40 -> 42 with chunks of 3). :func:`parse_prompt_schedule`
validates a schedule for a chunk size and video length; the pipeline then takes the first prompt's
embeddings as ``text_embeds`` and the others as ``prompt_switches``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from memrope._validation import check_int
from memrope.video_lengths import (
    LATENT_FRAMES_PER_SECOND,
    latent_frames_at_least,
    latent_position,
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


@dataclass(frozen=True)
class ScheduledPrompt:
    """``prompt`` is in force from latent frame ``frame`` (a chunk boundary) until the next entry.

    ``requested`` is the latent frame the entry asked for (``10s`` -> 40.0) before it moved to the
    chunk boundary ``frame``; ``None`` when built directly. It does not take part in comparisons.
    """

    frame: int
    prompt: str
    requested: float | None = field(default=None, compare=False)


def _parse_start(text: str, position: int) -> Fraction:
    """Latent frame ``START`` asks for: an int (latent frames) or a number followed by ``s`` (seconds)."""
    start = text.strip()
    try:
        if start.endswith("s"):
            seconds = float(start[:-1])
            if not math.isfinite(seconds):
                raise ValueError
            return latent_position(seconds)
        return Fraction(int(start))
    except ValueError:
        raise ValueError(
            f"prompt schedule entry {position}: START must be a latent frame (e.g. 120) or seconds "
            f"(e.g. 30s or 7.5s), got {start!r}"
        ) from None


def parse_prompt_schedule(
    text: str, *, chunk_frames: int, num_frames: int | None = None, separator: str = ";"
) -> tuple[ScheduledPrompt, ...]:
    """Parse ``START:PROMPT`` entries separated by ``separator`` (blank entries are ignored).

    Every start moves to the first chunk boundary at or after it (``4`` -> ``6`` and ``10s`` (40) ->
    ``42`` with chunks of 3); :attr:`ScheduledPrompt.requested` keeps what was asked.

    Args:
        text: the schedule, e.g. ``"0:a cat;120:the cat jumps"``.
        chunk_frames: latent frames per chunk; every switch starts a chunk.
        num_frames: video length in latent frames; every switch must come before it.
        separator: entry separator (``";"`` inline, ``"\\n"`` for a file with one entry per line).

    Returns:
        the entries in order; the first starts at frame 0.

    Raises:
        ValueError: an entry without ``:``, an empty prompt, a negative start, a start that is not
            after the previous one once on its chunk boundary, one at or after ``num_frames``, or a
            first entry after frame 0.
    """
    if not isinstance(text, str):
        raise TypeError(f"the prompt schedule must be a str, got {type(text).__name__}")
    chunk = check_int(chunk_frames, "chunk_frames")
    entries: list[ScheduledPrompt] = []
    for position, raw in enumerate(part for part in text.split(separator) if part.strip()):
        start_text, colon, prompt = raw.partition(":")
        if not colon:
            raise ValueError(f"prompt schedule entry {position} must be START:PROMPT, got {raw.strip()!r}")
        requested = _parse_start(start_text, position)
        named = f"prompt schedule entry {position} ({start_text.strip()!r}"
        if requested < 0:
            raise ValueError(f"{named}) starts at latent frame {float(requested):g}; starts must be >= 0")
        frame = math.ceil(requested / chunk) * chunk
        named += f" -> latent frame {frame})" if frame != requested else ")"
        prompt = prompt.strip()
        if not prompt:
            raise ValueError(f"{named} has an empty prompt")
        if entries and frame <= entries[-1].frame:
            raise ValueError(
                f"{named} does not start after the previous entry (latent frame {entries[-1].frame}); "
                f"starts must increase, by at least one chunk ({chunk} latent frames)"
            )
        if num_frames is not None and frame >= num_frames:
            raise ValueError(
                f"{named} starts at or after the video's end (latent frame {num_frames}); every "
                "entry must start before the end"
            )
        entries.append(ScheduledPrompt(frame, prompt, float(requested)))
    if not entries:
        raise ValueError(
            "the prompt schedule is empty; write START:PROMPT entries, e.g. '0:a cat;120:it jumps'"
        )
    if entries[0].frame != 0:
        raise ValueError(
            f"the prompt schedule must start at frame 0, its first entry starts at {entries[0].frame}"
        )
    return tuple(entries)


def format_prompt_schedule(entries: tuple[ScheduledPrompt, ...] | list[ScheduledPrompt]) -> str:
    """The inline text form of ``entries`` (``"0:a cat;120:it jumps"``)."""
    return ";".join(f"{entry.frame}:{entry.prompt}" for entry in entries)
