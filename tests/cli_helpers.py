"""What the CLI test modules share: the video-extra marker, the argument list of a tiny run, a sentinel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

needs_video = pytest.mark.skipif(
    importlib.util.find_spec("imageio_ffmpeg") is None or importlib.util.find_spec("imageio") is None,
    reason="needs the video extra",
)
SENTINEL = b"an existing video that must survive"


def tiny_args(output: Path, *extra: str, prompt: str = "a red fox") -> list[str]:
    """``memrope generate`` on the tiny model writing ``output``, without a progress bar, plus ``extra``."""
    return [
        "generate",
        "--model",
        "tiny",
        "--prompt",
        prompt,
        "--output",
        str(output),
        "--no-progress",
        *extra,
    ]
