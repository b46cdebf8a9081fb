"""Prompt schedules in text form: which prompt is in force from which latent frame.

LongLive-style interactive videos switch prompts mid-video. A schedule is written as entries
``START:PROMPT`` separated by ``;`` (or one entry per line in a file), ``START`` being a latent frame
(``120``) or a time in seconds (``30s``, 4 latent frames per second at 16 fps)::

    0:a cat sits on a windowsill;120:the cat jumps down;30.75s:the cat walks out of the room

:func:`parse_prompt_schedule` validates it for a chunk size and video length; the pipeline then takes
the first prompt's embeddings as ``text_embeds`` and the others as ``prompt_switches``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memrope.presets import FPS, TEMPORAL_FACTOR

LATENT_FRAMES_PER_SECOND = FPS / TEMPORAL_FACTOR


@dataclass(frozen=True)
class ScheduledPrompt:
    """``prompt`` is in force from latent frame ``frame`` until the next entry."""

    frame: int
    prompt: str


def _parse_start(text: str, position: int) -> int:
    """Latent frame of ``START``: an int (latent frames) or a number followed by ``s`` (seconds)."""
    start = text.strip()
    try:
        if start.endswith("s"):
            seconds = float(start[:-1])
            frames = seconds * LATENT_FRAMES_PER_SECOND
            if not math.isfinite(frames) or abs(frames - round(frames)) > 1e-9:
                raise ValueError
            return round(frames)
        return int(start)
    except ValueError:
        raise ValueError(
            f"prompt schedule entry {position}: START must be a latent frame (e.g. 120) or seconds "
            f"(a multiple of {1 / LATENT_FRAMES_PER_SECOND:g}, e.g. 30s), got {start!r}"
        ) from None


def parse_prompt_schedule(
    text: str, *, chunk_frames: int, num_frames: int | None = None, separator: str = ";"
) -> tuple[ScheduledPrompt, ...]:
    """Parse ``START:PROMPT`` entries separated by ``separator`` (blank entries are ignored).

    Args:
        text: the schedule, e.g. ``"0:a cat;120:the cat jumps"``.
        chunk_frames: latent frames per chunk; every switch must start a chunk.
        num_frames: video length in latent frames; every switch must come before it.
        separator: entry separator (``";"`` inline, ``"\\n"`` for a file with one entry per line).

    Returns:
        the entries in order; the first starts at frame 0.

    Raises:
        ValueError: an entry without ``:``, an empty prompt, a start that is not a multiple of
            ``chunk_frames``, not increasing, not before ``num_frames``, or a first entry after frame 0.
    """
    if not isinstance(text, str):
        raise TypeError(f"the prompt schedule must be a str, got {type(text).__name__}")
    entries: list[ScheduledPrompt] = []
    for position, raw in enumerate(part for part in text.split(separator) if part.strip()):
        start_text, colon, prompt = raw.partition(":")
        if not colon:
            raise ValueError(f"prompt schedule entry {position} must be START:PROMPT, got {raw.strip()!r}")
        frame = _parse_start(start_text, position)
        prompt = prompt.strip()
        if not prompt:
            raise ValueError(f"prompt schedule entry {position} (frame {frame}) has an empty prompt")
        previous = entries[-1].frame if entries else -1
        if frame % chunk_frames or frame <= previous or (num_frames is not None and frame >= num_frames):
            before = "" if num_frames is None else f" and before the video's end (latent frame {num_frames})"
            raise ValueError(
                f"prompt schedule entry {position} starts at latent frame {frame}; starts must be "
                f"multiples of the chunk ({chunk_frames} latent frames), increasing{before}"
            )
        entries.append(ScheduledPrompt(frame, prompt))
    if not entries:
        raise ValueError("the prompt schedule is empty; write START:PROMPT entries, e.g. '0:a cat;120:it jumps'")
    if entries[0].frame != 0:
        raise ValueError(f"the prompt schedule must start at frame 0, its first entry starts at {entries[0].frame}")
    return tuple(entries)


def format_prompt_schedule(entries: tuple[ScheduledPrompt, ...] | list[ScheduledPrompt]) -> str:
    """The inline text form of ``entries`` (``"0:a cat;120:it jumps"``)."""
    return ";".join(f"{entry.frame}:{entry.prompt}" for entry in entries)
