"""Video lengths: latent frames <-> video frames <-> seconds, and whole chunks (a leaf module).

``N`` latent frames decode to ``4N - 3`` video frames at 16 fps (the Wan VAE keeps the first frame
and expands each later latent frame into 4). A video is made of whole chunks of ``chunk_frames``
latent frames. Two conversions from seconds exist because they answer two questions:

* :func:`latent_frames_at_least` - the shortest whole-chunk *video* at least ``seconds`` long
  (4 s with chunks of 3 -> 18 latent frames = 69 video frames = 4.31 s);
* :func:`latent_frames_for_seconds` - the latent frame at time ``seconds`` on the 4 latent frames
  per second clock (``30`` -> 120), exact multiples of 0.25 s only.
"""

from __future__ import annotations

import math
from fractions import Fraction

from memrope._validation import check_int

__all__ = [
    "FPS",
    "LATENT_FRAMES_PER_SECOND",
    "TEMPORAL_FACTOR",
    "latent_frames_at_least",
    "latent_frames_for_seconds",
    "latent_position",
    "round_up_to_chunk",
    "seconds_of_latent_frames",
    "video_frame_count",
    "video_seconds",
]

#: Video frames per second of the Wan2.1 family.
FPS = 16
#: Video frames per latent frame (after the first) of the Wan VAE.
TEMPORAL_FACTOR = 4
#: Latent frames per second of video (4.0).
LATENT_FRAMES_PER_SECOND = FPS / TEMPORAL_FACTOR


def _check_seconds(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    return seconds


def round_up_to_chunk(frames: int, *, chunk_frames: int) -> int:
    """The smallest multiple of ``chunk_frames`` that is ``>= frames`` (both ints >= 1)."""
    chunk = check_int(chunk_frames, "chunk_frames")
    count = check_int(frames, "frames", meaning="latent frames")
    return -(-count // chunk) * chunk


def latent_frames_at_least(seconds: float, *, chunk_frames: int) -> int:
    """Latent frames of the shortest whole-chunk video at least ``seconds`` long.

    The smallest multiple ``N`` of ``chunk_frames`` with ``(4N - 3) / 16 >= seconds``, computed
    exactly (no float rounding): 4 s with chunks of 3 -> 18 (69 frames, 4.31 s).

    Raises:
        ValueError: ``seconds`` is not a finite number > 0, or ``chunk_frames`` not an int >= 1.
    """
    chunk = check_int(chunk_frames, "chunk_frames")
    length = _check_seconds(seconds)
    # video frames 4 (N - 1) + 1 >= 16 s  <=>  N >= (16 s - 1) / 4 + 1
    least = math.ceil((Fraction(length) * FPS - 1) / TEMPORAL_FACTOR) + 1
    return round_up_to_chunk(max(least, 1), chunk_frames=chunk)


def latent_frames_for_seconds(seconds: float) -> int:
    """Latent frames in ``seconds`` on the 4 latent frames per second clock: ``4 * seconds``.

    Raises:
        ValueError: ``seconds`` is not positive or not a multiple of 0.25 s.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    latent = seconds * FPS / TEMPORAL_FACTOR
    if seconds <= 0 or abs(latent - round(latent)) > 1e-9:
        raise ValueError(
            f"seconds must be a positive multiple of {TEMPORAL_FACTOR / FPS} (one latent frame is "
            f"{TEMPORAL_FACTOR} frames at {FPS} fps), got {seconds}"
        )
    return round(latent)


def latent_position(seconds: float) -> Fraction:
    """The latent frame (exact, possibly fractional) at time ``seconds``: ``4 * seconds`` (``7.5`` -> 30)."""
    return Fraction(seconds) * Fraction(FPS, TEMPORAL_FACTOR)


def seconds_of_latent_frames(latent_frames: int) -> float:
    """Seconds that ``latent_frames`` stand for at 4 latent frames per second (for speeds)."""
    return latent_frames / LATENT_FRAMES_PER_SECOND


def video_frame_count(latent_frames: int, temporal_factor: int = TEMPORAL_FACTOR) -> int:
    """Video frames ``temporal_factor * (N - 1) + 1`` that ``N`` latent frames decode to (0 for none)."""
    return 0 if latent_frames <= 0 else temporal_factor * (latent_frames - 1) + 1


def video_seconds(latent_frames: int) -> float:
    """Seconds of video (at 16 fps) that ``latent_frames`` decode to."""
    return video_frame_count(latent_frames) / FPS
