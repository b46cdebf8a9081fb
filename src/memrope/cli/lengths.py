"""Lengths in ``memrope generate``: what ``--seconds`` / ``--num-frames`` make, and how to say it."""

from __future__ import annotations

import argparse
from typing import Any

from memrope.errors import CLIError
from memrope.presets import Preset
from memrope.video_lengths import latent_frames_at_least, round_up_to_chunk, video_frame_count, video_seconds

__all__ = ["MAX_SECONDS", "_latent_frames", "_made", "_number"]

#: Longest video one ``memrope generate`` run makes (seconds): the initial noise is positioned before
#: the first frame, which takes longer the longer the video (~90 s for 24 h at 480x832 on one core).
MAX_SECONDS = 24 * 3600


def _made(latent_frames: int) -> str:
    """``'18 latent frames = 69 video frames = 4.31 s'``."""
    return (
        f"{latent_frames} latent frames = {video_frame_count(latent_frames)} video frames = "
        f"{video_seconds(latent_frames):.2f} s"
    )


def _number(value: float) -> str:
    """A number as a person would type it (``1000000000`` rather than ``1e+09``)."""
    return str(int(value)) if value == int(value) and abs(value) < 1e16 else repr(value)


def _latent_frames(args: argparse.Namespace, preset: Preset, chunk: int) -> tuple[int, dict[str, Any], str]:
    """Latent frames to make (whole chunks), the length as requested, and how to name the request.

    ``--seconds S``: the shortest whole-chunk video at least ``S`` s long; ``--num-frames N``: ``N``
    rounded up to whole chunks; neither: the preset's length. At most :data:`MAX_SECONDS` of video.
    """
    longest = latent_frames_at_least(MAX_SECONDS, chunk_frames=chunk)
    bound = (
        f"memrope generate makes at most 24 h of video per run (--seconds {MAX_SECONDS} = --num-frames "
        f"{longest}) because the initial noise is positioned before the first frame, which takes longer "
        "the longer the video"
    )
    if args.seconds is not None:
        seconds = args.seconds
        asked = f"--seconds {_number(seconds)}"
        if seconds <= 0:
            raise CLIError(f"{asked}: the length must be > 0 seconds")
        if seconds > MAX_SECONDS:
            raise CLIError(f"{asked} is too long: {bound}")
        return latent_frames_at_least(seconds, chunk_frames=chunk), {"seconds": seconds}, asked
    if args.num_frames is None:
        return (
            preset.latent_frames,
            {"latent_frames": preset.latent_frames, "preset_default": True},
            (f"the {preset.name} preset's length"),
        )
    asked = f"--num-frames {args.num_frames}"
    if args.num_frames > longest:
        raise CLIError(f"{asked} is too long: {bound}")
    return round_up_to_chunk(args.num_frames, chunk_frames=chunk), {"latent_frames": args.num_frames}, asked
